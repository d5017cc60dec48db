//! The MQTT adapter on rumqttc (feature `mqtt`), MQTT 3.1.1.
//!
//! rumqttc is only the wire here; the engine owns reconnection:
//!
//! * **One event loop per link.** `open` builds a fresh rumqttc
//!   `EventLoop`, polls it once to connect (CONNACK), restores the recorded
//!   subscriptions, and hands the event loop to a task that polls it until
//!   its first error. That error retires the loop and is reported with the
//!   link's generation; rumqttc never gets the next `poll()` that would make
//!   it reconnect on its own, with no delay.
//! * **Refusals are classified.** CONNACK "bad user name or password",
//!   "not authorised", "bad client id" and "protocol version", and TLS
//!   configuration or verification failures are permanent (the engine gives
//!   up at once by default, [S38](crate#scenario-ids-and-failure-reports)); "server unavailable" and I/O errors are
//!   transient.
//! * **Liveness.** Pings go out every half keep-alive from the link's task,
//!   whatever the application does; every inbound packet is reported as
//!   activity. [`MqttConfig::engine_config`] sets the engine's watchdog to
//!   the keep-alive, so a half-open link is declared dead within 1.5 x
//!   keep-alive of the last inbound packet (rumqttc's own "no PINGRESP"
//!   error usually ends it sooner, within one keep-alive).
//! * **One session at a time.** `close` sends DISCONNECT when it can, then
//!   aborts and awaits the link's tasks, so the socket is closed before the
//!   engine opens the next link; a link that dies closes its socket before
//!   it reports the loss (S17).
//! * **Subscriptions** are a recorded set ([`MqttTransport::subscribe`],
//!   [`MqttTransport::unsubscribe`]), restored on each new link before
//!   `open` returns, so before the outbox replays anything (S18). A SUBACK
//!   failure is a typed error ([`SubscribeError::Refused`] at run time,
//!   [`MqttError::RestoreRefused`] during a restore, which fails the attempt
//!   so that it is surfaced and retried).
//! * **Publishing** goes through the outbox (the transport implements its
//!   `Deliver` trait): QoS 1 resolves on PUBACK, QoS 2 on PUBCOMP, QoS 0 once
//!   rumqttc has written and flushed the PUBLISH (it cannot be confirmed).
//!   A link that dies fails every unconfirmed publish with "link lost", and
//!   the outbox replays them, in order, on the next link; a message may then
//!   reach the broker twice (at most the in-flight window per loss).
//!   Because every link is a fresh rumqttc session state, a QoS 2 publish
//!   cut between PUBREC and PUBCOMP is replayed as a new message: QoS 2 is
//!   exactly-once within a link, at-least-once across links.
//! * **Incoming messages** arrive on one bounded [`Messages`] stream that
//!   outlives every link, each tagged with its link's generation. A QoS 1/2
//!   delivery is acknowledged only when the application takes it, so a slow
//!   reader holds the broker back (its in-flight window) instead of growing
//!   memory. A delivery larger than `max_packet_size` is read, discarded,
//!   and surfaced once as [`InboundError::TooLarge`] (acknowledged when taken,
//!   so the broker stops sending it) instead of killing the link.
//!
//! Known limit: with a persistent session (`clean_session(false)`), a QoS 2
//! delivery *to* us that was cut between PUBREC and PUBREL makes the broker
//! resend PUBREL on the next link, which a fresh rumqttc state rejects as
//! unsolicited: that link fails once more. Subscribe at QoS 1 with
//! persistent sessions if that matters.

mod config;
mod deliver;
mod error;
mod inbound;
mod link;
mod message;
mod reach;
mod transport;

pub use config::{EnvError, MqttConfig, MqttConfigError, RestorePolicy, UrlProblem};
pub use deliver::DeliverConfirm;
pub use error::{LinkPublishError, MqttError, SubscribeError};
pub use inbound::{InboundError, Messages};
pub use link::MqttLink;
pub use message::{Message, MqttConfirm, MqttMessage};
pub use transport::{MqttTransport, SubscribeOutcome, TransportStats};

/// The rumqttc crate this adapter is built on (for TLS configuration and
/// packet types).
pub use rumqttc;
pub use rumqttc::{ConnectReturnCode, QoS, TlsConfiguration};
