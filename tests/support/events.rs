//! Reading engine events recorded with their times.

use std::time::Instant;

use redial::machine::{Generation, Reason, StateKind};
use redial::runtime::Event;

/// One state change: (time, from, to, generation, reason).
pub type Transition = (Instant, StateKind, StateKind, Generation, Reason);

/// The state changes among `events`, in order.
pub fn transitions(events: &[(Instant, Event)]) -> Vec<Transition> {
    events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::StateChanged {
                from,
                to,
                generation,
                reason,
                ..
            } => Some((*t, *from, *to, *generation, *reason)),
            _ => None,
        })
        .collect()
}
