//! Support code shared by the broker tests: each test binary's `main.rs` declares it once
//! (`#[path = "../support/mod.rs"] mod support;`), its modules `use crate::support;`.
// Each test binary uses only part of the support code.
#![allow(dead_code)]

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod brokers;
pub mod chaos;
pub mod cluster;
pub mod events;
pub mod mosquitto;
pub mod net;
pub mod recovery;
