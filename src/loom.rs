//! Switches the shared-state primitives to loom's models under `--cfg loom`,
//! so the handle's concurrency is checked exhaustively (see the README's
//! contributing section).

pub(crate) mod sync {
    pub(crate) mod atomic {
        #[cfg(all(test, loom))]
        pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
        #[cfg(not(all(test, loom)))]
        pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    }

    #[cfg(all(test, loom))]
    pub(crate) use loom::sync::{Mutex, MutexGuard};
    #[cfg(not(all(test, loom)))]
    pub(crate) use std::sync::{Mutex, MutexGuard};
}

pub(crate) mod task {
    #[cfg(not(all(test, loom)))]
    pub(crate) use futures::task::AtomicWaker;
    #[cfg(all(test, loom))]
    pub(crate) use loom::future::AtomicWaker;
}
