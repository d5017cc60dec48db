//! The MQTT adapter against the system Mosquitto (127.0.0.1:1883) and
//! private ones on free loopback ports: basics, back-pressure, failover,
//! half-open links, outages, oversized deliveries, broker restarts, the
//! reachability probe, sessions and TLS
//! (`cargo test --all-features --test mqtt`).
//!
//! The issue 11 scenarios are in `recovery`.

#[path = "../mqtt_util/mod.rs"]
mod mqtt_util;
#[path = "../support/mod.rs"]
mod support;

mod backpressure;
mod basic;
mod failover;
mod halfopen;
mod outage;
mod poison;
mod private;
mod reach;
mod session;
mod tls;
