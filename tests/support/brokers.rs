//! Broker availability checks for tests that need a real broker.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The local RabbitMQ's AMQP port.
pub const AMQP_ADDR: &str = "127.0.0.1:5672";
/// The local MQTT broker's port.
pub const MQTT_ADDR: &str = "127.0.0.1:1883";

fn reachable(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Whether RabbitMQ accepts TCP connections on 127.0.0.1:5672.
pub fn amqp_available() -> bool {
    reachable(AMQP_ADDR)
}

/// Whether an MQTT broker accepts TCP connections on 127.0.0.1:1883.
pub fn mqtt_available() -> bool {
    reachable(MQTT_ADDR)
}

/// Returns `available`; when the broker is absent, prints a clear skip
/// message, or panics when `REDIAL_REQUIRE_BROKERS=1` (as in CI).
pub fn require(name: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var("REDIAL_REQUIRE_BROKERS").as_deref() == Ok("1") {
        panic!("{name} broker is required (REDIAL_REQUIRE_BROKERS=1) but is not reachable");
    }
    eprintln!(
        "SKIPPED: {name} broker not reachable on localhost; set REDIAL_REQUIRE_BROKERS=1 to fail instead"
    );
    false
}
