//! # redial
//!
//! A reconnect engine for broker clients. See the README and `docs/spec.md`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backoff;
pub mod machine;
pub mod rng;
