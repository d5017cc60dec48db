//! Property tests (proptest): the machine against a reference model, the
//! sans-IO outbox against a naive model, and endpoint selection
//! (`cargo test --all-features --test props`).
//!
//! They are their own crate (`redial-props`, a workspace member) so that
//! proptest is built only for them, not for every example.

mod endpoint;
mod machine;
mod outbox;
