//! # redial
//!
//! A reconnect engine for broker clients. See the README and `docs/spec.md`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod backoff;
pub mod machine;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod outbox;
pub mod rng;

#[cfg(feature = "tokio")]
pub(crate) mod loom;
#[cfg(feature = "tokio")]
pub mod runtime;
#[cfg(feature = "tokio")]
pub mod testing;
