//! Internals with **no semver guarantees** (feature `unstable`): for
//! redial's own tests, benches and fuzzer and for ports checking against the
//! reference. They may change in any release, whatever its version number;
//! see [Stability](crate#stability).

/// The machine's invariant checker (`docs/spec.md`, "Invariants"): a
/// [`Checker`](invariants::Checker) watches a
/// [`Machine`](crate::machine::Machine) step by step.
pub mod invariants {
    pub use crate::machine::invariants::*;
}

/// The machine's transition table: every edge, with its reason; the spec's
/// table and the state diagrams are generated from it.
pub mod table {
    pub use crate::machine::table::*;
}

/// The outbox's sans-IO core (what the outbox's `Publisher`
/// drives) and the types of its calls: the delivery vectors, the outbox
/// fuzzer and the benches drive it directly.
pub use crate::outbox::core::{
    ChannelClosed, Gate, InvariantViolation, OutboxCore, Resolved, Submit,
};

/// The machine's PRNG (`docs/spec.md`, "PRNG"), for tools that draw the
/// same sequences as the machine.
pub use crate::rng::SplitMix64;
