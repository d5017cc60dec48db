//! The engine, the outbox and the machine on the in-memory transport
//! (mostly on tokio's paused clock), the configurations, and the committed
//! conformance vectors and diagrams: no broker, no real network.
//!
//! One binary for all of them (`cargo test --test engine`): linking one
//! binary per file cost more than running these tests.

#[path = "../support/engine.rs"]
mod engine;

mod config_api;
mod config_rejects;
mod config_secrets;
mod config_seed;
mod delivery_vectors;
mod diagram;
mod embedding;
mod liveness;
mod no_alloc;
mod observability;
mod observability_api;
mod outbox_engine;
mod runtime_api;
mod scenarios_backoff;
mod scenarios_endpoints;
mod scenarios_liveness;
mod scenarios_probe;
mod scenarios_reconnect;
mod scenarios_shutdown;
mod scenarios_storm;
mod smoke;
mod vectors;
