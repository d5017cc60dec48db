//! The AMQP adapter against the system RabbitMQ (127.0.0.1:5672), straight
//! and through the chaos proxy: channel errors, faults, heartbeats,
//! prefetch, the reachability probe and topology replay
//! (`cargo test --all-features --test amqp`).
//!
//! The memory alarm test is not here: it is broker-wide, so it has its own
//! binary (`amqp_blocked`); the issue 11 scenarios are in `recovery`.

#[path = "../support/mod.rs"]
mod support;

mod channel_errors;
mod faults;
mod heartbeat;
mod prefetch;
mod proxy_selftest;
mod reach;
mod topology;
mod topology_log;
