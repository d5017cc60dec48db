//! The outbox: every publish a caller submits ends in exactly one outcome,
//! confirmed by the broker or a typed error, and success is never reported
//! without a broker confirm. See `docs/delivery.md` for the full semantics.
//!
//! * `OutboxCore` is the sans-IO heart (always compiled): a bounded queue
//!   with per-generation in-flight tracking, time passed in. It is public
//!   only through `redial::unstable` (feature `unstable`, no semver
//!   guarantees).
//! * [`Publisher`] (feature `tokio`) is the async front: it feeds the core
//!   from any thread and flushes it through the engine's current link with
//!   an adapter's [`Deliver`] implementation.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use redial::machine::Config;
//! use redial::outbox::{OutboxConfig, Publisher};
//! use redial::runtime::Engine;
//! use redial::testing::MemoryTransport;
//!
//! let transport = MemoryTransport::new();
//! let engine = Engine::spawn(Config::default(), transport.clone());
//! let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
//! // Buffered while the link is down, sent in order once it is up.
//! let receipt = publisher.publish("hello".to_string()).await;
//! match receipt.await {
//!     Ok(confirmed) => println!("confirmed on link {}", confirmed.generation),
//!     Err(error) => println!("not delivered: {error}"),
//! }
//! // Drains this publisher; the engine, which others may share, runs on.
//! publisher.shutdown(Duration::from_secs(5)).await;
//! engine.shutdown().await;
//! # }
//! ```

mod config;
// Parts of the core only the publisher's tests and `crate::unstable` use.
#[cfg_attr(not(feature = "unstable"), allow(dead_code))]
pub(crate) mod core;
#[cfg(feature = "tokio")]
mod deliver;
#[cfg(feature = "tokio")]
pub(crate) mod flush;
#[cfg(feature = "tokio")]
mod publisher;
#[cfg(feature = "tokio")]
pub(crate) mod shared;
#[cfg_attr(not(feature = "unstable"), allow(dead_code))]
mod store;

#[cfg(all(test, loom))]
mod loom_tests;

pub use self::config::{
    ConfirmTimeout, OutboxConfig, OutboxConfigBuilder, OutboxConfigError, OverflowPolicy,
    SubmitOptions,
};
pub use self::core::{
    Confirmed, FailedCounts, MessageId, OutboxStats, Outcome, PublishError, PublishErrorKind,
    SharedError,
};
// The sans-IO core: public through `crate::unstable` only (no semver guarantees).
#[cfg(feature = "tokio")]
pub(crate) use self::core::Gate;
#[cfg(feature = "tokio")]
pub use deliver::{Deliver, DeliveryError};
#[cfg(feature = "tokio")]
pub use publisher::{Publisher, Receipt};
