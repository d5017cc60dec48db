//! The driver's step without I/O: which inputs a wake-up feeds the machine,
//! in which order, and what becomes of the machine's outputs. The tokio
//! driver (`driver.rs`) and the loom models (`loom_tests.rs`) both run this
//! code; only the execution of `Open`, `Close` and `Probe` differs between
//! them.
//!
//! One input is fed as rounds: [`Step::feed`] hands the input to the
//! machine and returns the first round's actions; the caller executes them
//! (a close completes before anything else happens) and asks
//! [`Step::settle`] for the next round, until there is none.

use std::time::Instant;

use crate::machine::{Input, Machine, Output, StateKind};
use crate::runtime::shared::{Batch, Commands, Shared};

/// What a step needs from its surroundings, besides the machine.
pub(crate) trait Effects {
    /// The current time (the driver's clock; a model's own).
    fn now(&self) -> Instant;
    /// The machine moved: publish its state (to the handle at once, so
    /// stale reports are rejected; watchers are woken by [`Effects::notify`]).
    fn publish(&mut self, machine: &Machine);
    /// A report output: `StateChanged`, `LivenessLost` or `GaveUp`.
    fn report(&mut self, machine: &Machine, output: Output);
    /// The round's reports are out: wake whoever watches the state.
    fn notify(&mut self);
    /// An input was stale at the machine (an old generation).
    fn stale_input(&mut self);
    /// No open is running and no link is held.
    fn idle(&self) -> bool;
}

/// The work a wake-up takes from the handle.
#[derive(Debug)]
pub(crate) struct Work {
    pub(crate) commands: Commands,
    pub(crate) batch: Batch,
}

impl Work {
    /// Takes the pending reports and commands (`Shared::take_work` says
    /// why reports are taken first).
    pub(crate) fn take(shared: &Shared) -> Self {
        let (commands, batch) = shared.take_work();
        Self { commands, batch }
    }

    /// The inputs, in the order the machine must see them: a shutdown
    /// before anything the links reported (it wins over a reconnect), then
    /// the batch.
    pub(crate) fn inputs(&self) -> impl Iterator<Item = Input> + '_ {
        let command = if self.commands.shutdown {
            Some(Input::Shutdown)
        } else if self.commands.reconnect {
            Some(Input::ReconnectNow)
        } else {
            None
        };
        command.into_iter().chain(self.batch.inputs())
    }
}

/// The machine and the rules of one step around it.
#[derive(Debug)]
pub(crate) struct Step {
    machine: Machine,
    /// Reused buffer for a round's actions.
    actions: Vec<Output>,
}

impl Step {
    pub(crate) fn new(machine: Machine) -> Self {
        Self {
            machine,
            actions: Vec::new(),
        }
    }

    pub(crate) fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Feeds one input; returns the first round's actions (`Open`,
    /// `Close`, `Probe`, `Restore`), to execute in order before calling [`Step::settle`].
    pub(crate) fn feed(&mut self, input: Input, fx: &mut impl Effects) -> Vec<Output> {
        let before = self.machine.stats().stale_inputs;
        self.machine.handle(fx.now(), input);
        if self.machine.stats().stale_inputs > before {
            fx.stale_input();
        }
        fx.publish(&self.machine);
        self.round(fx)
    }

    /// After a round's actions ran: the next round, if the machine has one.
    /// A shutdown's close has been executed once nothing is open or
    /// opening; the machine hears so here.
    pub(crate) fn settle(&mut self, fx: &mut impl Effects) -> Option<Vec<Output>> {
        if self.machine.kind() == StateKind::Closing && fx.idle() {
            self.machine.handle(fx.now(), Input::CloseCompleted);
            fx.publish(&self.machine);
            return Some(self.round(fx));
        }
        None
    }

    /// Hands a round's buffer back for reuse.
    pub(crate) fn recycle(&mut self, mut actions: Vec<Output>) {
        actions.clear();
        // Kept while reconnecting (attempts and probes come round after
        // round); dropped once a link is up, as most engines then stay idle
        // for long and the buffer is a 112-byte heap chunk each.
        if !self.machine.kind().is_link_up() {
            self.actions = actions;
        } else {
            self.machine.release_buffers();
        }
    }

    /// Report first, act second: the round's reports are out and watchers
    /// woken before any close or open runs, so they see `closing` while the
    /// close runs. Timers due by now fire here, inside `poll`.
    fn round(&mut self, fx: &mut impl Effects) -> Vec<Output> {
        let mut actions = std::mem::take(&mut self.actions);
        while let Some(output) = self.machine.poll(fx.now()) {
            match output {
                Output::Open { .. }
                | Output::Close { .. }
                | Output::Probe { .. }
                | Output::Restore { .. } => actions.push(output),
                report => fx.report(&self.machine, report),
            }
        }
        fx.publish(&self.machine);
        fx.notify();
        actions
    }
}
