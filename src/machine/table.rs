//! The transition table: every edge the machine may take, with its reason.
//!
//! The machine checks each transition against this table (in debug builds
//! and in every test), the spec's table and the state diagram under `docs/`
//! are generated from it, and a test fails when the committed diagram is
//! out of date.

use super::io::{Reason, StateKind};

use StateKind as S;

/// One edge of the state diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The state before.
    pub from: StateKind,
    /// Why the machine moved.
    pub reason: Reason,
    /// The state after.
    pub to: StateKind,
}

const fn e(from: StateKind, reason: Reason, to: StateKind) -> Edge {
    Edge { from, reason, to }
}

/// Every allowed transition. A transition not listed here is a bug.
pub const EDGES: &[Edge] = &[
    e(S::Idle, Reason::Start, S::Connecting),
    e(S::Idle, Reason::Adopted, S::Connected),
    e(S::Idle, Reason::Shutdown, S::Closed),
    e(S::Connecting, Reason::AttemptSucceeded, S::Connected),
    e(S::Connecting, Reason::AttemptFailed, S::BackingOff),
    e(S::Connecting, Reason::ConnectTimeout, S::BackingOff),
    e(S::Connecting, Reason::LinkLost, S::BackingOff),
    e(S::Connecting, Reason::GaveUp, S::Failed),
    e(S::Connecting, Reason::Shutdown, S::Closing),
    e(S::Connected, Reason::LinkLost, S::Connecting),
    e(S::Connected, Reason::LinkLost, S::BackingOff),
    e(S::Connected, Reason::LivenessLost, S::Connecting),
    e(S::Connected, Reason::LivenessLost, S::BackingOff),
    e(S::Connected, Reason::Blocked, S::Blocked),
    e(S::Connected, Reason::ReconnectRequested, S::Connecting),
    e(S::Connected, Reason::GaveUp, S::Failed),
    e(S::Connected, Reason::Shutdown, S::Closing),
    e(S::Blocked, Reason::Unblocked, S::Connected),
    e(S::Blocked, Reason::LinkLost, S::Connecting),
    e(S::Blocked, Reason::LinkLost, S::BackingOff),
    e(S::Blocked, Reason::LivenessLost, S::Connecting),
    e(S::Blocked, Reason::LivenessLost, S::BackingOff),
    e(S::Blocked, Reason::BlockedTooLong, S::Connecting),
    e(S::Blocked, Reason::BlockedTooLong, S::BackingOff),
    e(S::Blocked, Reason::ReconnectRequested, S::Connecting),
    e(S::Blocked, Reason::GaveUp, S::Failed),
    e(S::Blocked, Reason::Shutdown, S::Closing),
    e(S::BackingOff, Reason::BackoffElapsed, S::Connecting),
    e(S::BackingOff, Reason::LinkResumed, S::Connected),
    e(S::BackingOff, Reason::ReconnectRequested, S::Connecting),
    e(S::BackingOff, Reason::Shutdown, S::Closed),
    e(S::BackingOff, Reason::Shutdown, S::Closing),
    e(S::Closing, Reason::CloseCompleted, S::Closed),
    e(S::Closing, Reason::CloseTimeout, S::Closed),
    e(S::Failed, Reason::ReconnectRequested, S::Connecting),
    e(S::Failed, Reason::Shutdown, S::Closed),
];

/// Whether `from -> to` for `reason` is in the table.
pub fn allows(from: StateKind, reason: Reason, to: StateKind) -> bool {
    EDGES
        .iter()
        .any(|edge| edge.from == from && edge.reason == reason && edge.to == to)
}

/// The state diagram as Mermaid source, generated from [`EDGES`].
pub fn mermaid() -> String {
    let mut out = String::from("stateDiagram-v2\n    [*] --> idle\n");
    for edge in EDGES {
        out.push_str(&format!(
            "    {} --> {}: {}\n",
            edge.from.as_str(),
            edge.to.as_str(),
            reason_name(edge.reason)
        ));
    }
    out.push_str("    closed --> [*]\n");
    out
}

/// The state diagram as Graphviz DOT source, generated from [`EDGES`].
///
/// Parallel edges (same `from` and `to`) are drawn as one arrow labelled with
/// every reason. Render it with
/// `dot -Tsvg docs/state-diagram.dot -o docs/state-diagram.svg`.
/// `closed` is terminal (double border); `failed` is sticky (dashed border):
/// only `reconnect_now` and `shutdown` leave it.
pub fn dot() -> String {
    let mut out = String::from(
        "// Generated from redial::machine::table::EDGES by table::dot().\n\
         // Regenerate: REDIAL_BLESS=1 cargo test --test engine diagram::\n\
         digraph redial {\n    \
         rankdir=LR;\n    \
         node [shape=box, style=rounded, fontname=\"Helvetica\"];\n    \
         edge [fontname=\"Helvetica\", fontsize=10];\n    \
         __start [shape=point, width=0.15, label=\"\"];\n    \
         __end [shape=doublecircle, width=0.1, style=filled, fillcolor=black, label=\"\"];\n",
    );
    for &kind in StateKind::ALL {
        let extra = match kind {
            S::Closed => ", peripheries=2",
            S::Failed => ", style=\"rounded,dashed\"",
            _ => "",
        };
        out.push_str(&format!(
            "    {name} [label=\"{name}\"{extra}];\n",
            name = kind.as_str()
        ));
    }
    out.push_str("    __start -> idle;\n");
    // One arrow per (from, to) pair, labelled with all its reasons, in the
    // order of their first appearance in the table.
    for (i, edge) in EDGES.iter().enumerate() {
        let same_pair = |other: &Edge| other.from == edge.from && other.to == edge.to;
        if EDGES[..i].iter().any(same_pair) {
            continue;
        }
        let reasons: Vec<&str> = EDGES
            .iter()
            .filter(|other| same_pair(other))
            .map(|other| reason_name(other.reason))
            .collect();
        out.push_str(&format!(
            "    {} -> {} [label=\"{}\"];\n",
            edge.from.as_str(),
            edge.to.as_str(),
            reasons.join("\\n")
        ));
    }
    out.push_str("    closed -> __end;\n}\n");
    out
}

/// The reason's name as the spec and the vectors write it.
pub const fn reason_name(reason: Reason) -> &'static str {
    match reason {
        Reason::Start => "start",
        Reason::Adopted => "adopted",
        Reason::AttemptSucceeded => "attempt_succeeded",
        Reason::AttemptFailed => "attempt_failed",
        Reason::ConnectTimeout => "connect_timeout",
        Reason::LinkLost => "link_lost",
        Reason::LinkResumed => "link_resumed",
        Reason::LivenessLost => "liveness_lost",
        Reason::Blocked => "blocked",
        Reason::Unblocked => "unblocked",
        Reason::BlockedTooLong => "blocked_too_long",
        Reason::ReconnectRequested => "reconnect_requested",
        Reason::BackoffElapsed => "backoff_elapsed",
        Reason::Shutdown => "shutdown",
        Reason::CloseCompleted => "close_completed",
        Reason::CloseTimeout => "close_timeout",
        Reason::GaveUp => "gave_up",
    }
}
