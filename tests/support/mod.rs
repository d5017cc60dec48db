//! Support code shared by the broker tests: `mod support;` in a test file.
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
