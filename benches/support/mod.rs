//! Shared by the benchmarks: a broker that costs nothing, so that what is
//! measured is redial's own work.
// Each bench binary uses part of it.
#![allow(dead_code)]

use std::future::{Future, Ready, ready};

use redial::machine::Reason;
use redial::outbox::{Deliver, DeliveryError, MessageId};
use redial::runtime::{OpenContext, Transport};
use redial::testing::MemoryError;

/// Opens at once, and confirms every message as soon as it is written,
/// without recording anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullBroker;

impl Transport for NullBroker {
    type Link = ();
    type Error = MemoryError;

    fn open(
        &self,
        _ctx: OpenContext,
    ) -> impl Future<Output = Result<(), MemoryError>> + Send + 'static {
        ready(Ok(()))
    }

    fn close(&self, _link: (), _reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        ready(())
    }
}

impl Deliver for NullBroker {
    type Message = u64;
    type Confirm = Ready<Result<(), DeliveryError>>;

    fn send(
        &self,
        _link: &(),
        _message: &u64,
        _id: MessageId,
    ) -> impl Future<Output = Result<Self::Confirm, DeliveryError>> + Send {
        ready(Ok(ready(Ok(()))))
    }
}
