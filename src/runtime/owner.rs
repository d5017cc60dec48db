//! Who keeps an engine running: the [`crate::runtime::Engine`] and every
//! publisher made from it. The engine shuts down when the last of them is
//! dropped (or at once on an explicit shutdown); handles only observe.

use std::sync::atomic::Ordering;

use crate::runtime::handle::Handle;

/// One owner's claim on the engine: cloning adds an owner, dropping the
/// last one asks the driver to shut down gracefully in the background.
#[derive(Debug)]
pub(crate) struct Owner {
    handle: Handle,
}

impl Owner {
    /// The first owner, made with the engine (its count starts at 1).
    pub(crate) fn first(handle: Handle) -> Self {
        Self { handle }
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Clone for Owner {
    fn clone(&self) -> Self {
        self.handle.inner.owners.fetch_add(1, Ordering::Relaxed);
        Self {
            handle: self.handle.clone(),
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // AcqRel, as `Arc`'s count: the last owner sees every other's end.
        if self.handle.inner.owners.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.handle.inner.shared.command(false, true);
        }
    }
}
