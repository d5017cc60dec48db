//! # redial
//!
//! The reconnect engine broker clients embed.
//!
//! Data flows one way: reports and results become [`machine::Input`]s, the
//! sans-IO [`machine::Machine`] decides, and its [`machine::Output`]s are
//! executed by a driver. Every link has a [`machine::Generation`]; an input
//! naming any other generation than the current one changes nothing, so a
//! late or duplicated callback can never start a second reconnect.
//!
//! ## Scenario ids and failure reports
//!
//! redial was designed from five public failure reports about broker
//! clients, numbered 000 to 004 (report 003: an SDK's queued "connection
//! interrupted" callbacks started competing reconnect loops, the reconnect
//! storm), and from the failure scenarios drawn from them, numbered S01 to
//! S44 (S05: an interrupt that runs after its link already resumed). The
//! docs, tests and conformance vectors refer to both by these ids;
//! `docs/scenarios.md`, shipped with the crate, defines every id and the
//! words the docs use (link, generation, outage, resume, probe).
//!
//! * [`machine`]: the state machine (no threads, no I/O, time passed in),
//!   specified language-neutrally in `docs/spec.md` with conformance vectors.
//! * [`backoff`]: exponential backoff with five jitter modes on a portable
//!   PRNG (SplitMix64, `docs/spec.md`).
//! * `runtime` (feature `tokio`): the lock-free, `Send + Sync`
//!   [`Handle`](runtime::Handle) foreign threads report through, the tokio
//!   driver, the [`Transport`](runtime::Transport) trait adapters implement.
//! * [`outbox`]: every publish ends in exactly one outcome, a broker confirm
//!   or a typed error; unconfirmed messages are replayed on the next link.
//! * `amqp` (feature `amqp`, lapin) and `mqtt` (feature `mqtt`, rumqttc): the
//!   adapters.
//! * `testing` (feature `test-util`): an in-memory transport that fails,
//!   hangs, flaps and fires late callbacks on command.
//! * [`env`](mod@env): configuration from environment variables under a prefix the
//!   embedding library chooses (`docs/configuration.md`).
//!
//! The engine's tasks log in `tracing` spans with stable names and fields,
//! and with feature `metrics` it exports counters, gauges and histograms
//! through the `metrics` facade: both are listed in
//! `docs/observability.md`, shipped with the crate.
//!
//! # Stability
//!
//! Everything public outside `unstable` follows semver. Types that will
//! grow (states, reasons, outputs, reports, events, errors, counters) are
//! `#[non_exhaustive]`: match their enums with a `_` arm (and their
//! variants' fields with `..`), and read their structs' fields rather than
//! building them (configurations have builders), so a new case or counter
//! is a minor release, not a breaking one.
//!
//! * `testing` (feature `test-util`, off by default, like tokio's) is for
//!   tests: its scripting API follows semver, but it may grow cases.
//! * `unstable` (feature `unstable`, off by default) has **no semver
//!   guarantees**: the machine's invariant checker and transition table, the
//!   PRNG and the sans-IO outbox core, for redial's own tests, benches and
//!   fuzzer and for ports checking against the reference. They may change
//!   in any release.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
// docs.rs (package.metadata.docs.rs) builds with `--cfg docsrs` on nightly:
// every feature-gated item then carries an "Available on crate feature" badge.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod amqp;
pub mod backoff;
pub mod env;
pub mod machine;
#[cfg(feature = "mqtt")]
#[cfg_attr(docsrs, doc(cfg(feature = "mqtt")))]
pub mod mqtt;
pub mod outbox;
#[cfg(any(feature = "amqp", feature = "mqtt"))]
mod reach;
#[cfg(any(feature = "amqp", feature = "mqtt"))]
mod redact;
mod rng;
#[cfg(feature = "serde")]
mod serde_duration;
#[cfg(all(feature = "serde", any(feature = "amqp", feature = "mqtt")))]
mod serde_text;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/clusters.md's examples, compiled as doctests.
#[cfg(all(doctest, feature = "amqp", feature = "mqtt"))]
#[doc = include_str!("../docs/clusters.md")]
pub struct ClustersDoctests;

/// docs/configuration.md's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/configuration.md")]
pub struct ConfigurationDoctests;

#[cfg(feature = "tokio")]
mod chain;
#[cfg(feature = "tokio")]
pub(crate) mod loom;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod runtime;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

#[cfg(feature = "unstable")]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable")))]
pub mod unstable;
