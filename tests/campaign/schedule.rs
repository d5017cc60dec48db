//! Seeded fault schedules: a pure function of (seed, adapter, profile), so
//! `--seed N` replays exactly the same faults in the same order.

use std::fmt;
use std::time::Duration;

use redial::unstable::SplitMix64;

/// Which adapter a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Adapter {
    /// RabbitMQ through `redial::amqp`.
    Amqp,
    /// A private Mosquitto through `redial::mqtt`.
    Mqtt,
}

impl fmt::Display for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Adapter::Amqp => "amqp",
            Adapter::Mqtt => "mqtt",
        })
    }
}

/// One fault, held for a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The proxy resets every connection (both sides see an RST).
    Sever,
    /// The proxy forwards nothing either way, sockets kept open.
    Blackhole,
    /// Nothing the client sends reaches the broker; the broker's traffic
    /// still arrives.
    DropClientToBroker,
    /// Sever, then refuse every new connection for the window.
    Refuse,
    /// `rabbitmqctl close_connection` on our connection (AMQP).
    BrokerClose,
    /// Every `every`-th publish goes to an exchange that does not exist,
    /// interleaved with valid ones (AMQP).
    ChannelErrors {
        /// One bad publish in this many.
        every: u32,
    },
    /// A broker-wide memory alarm (AMQP), always cleared.
    MemoryAlarm,
    /// A PUBLISH larger than the client's `max_packet_size`, sent by an
    /// independent client to the topic redial subscribes to (MQTT).
    Poison,
    /// The redial consumer handles one message per `SLOW_CONSUMER_PAUSE`.
    SlowConsumer,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Sever => f.write_str("sever"),
            Fault::Blackhole => f.write_str("blackhole"),
            Fault::DropClientToBroker => f.write_str("drop-c2b"),
            Fault::Refuse => f.write_str("refuse"),
            Fault::BrokerClose => f.write_str("broker-close"),
            Fault::ChannelErrors { every } => write!(f, "channel-errors/{every}"),
            Fault::MemoryAlarm => f.write_str("memory-alarm"),
            Fault::Poison => f.write_str("poison"),
            Fault::SlowConsumer => f.write_str("slow-consumer"),
        }
    }
}

impl Fault {
    /// Whether the fault takes links down by design (the others must not).
    pub fn takes_links_down(self) -> bool {
        matches!(
            self,
            Fault::Sever
                | Fault::Blackhole
                | Fault::DropClientToBroker
                | Fault::Refuse
                | Fault::BrokerClose
        )
    }

    /// A short name for the summary table.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Sever => "sever",
            Fault::Blackhole => "blackhole",
            Fault::DropClientToBroker => "drop-c2b",
            Fault::Refuse => "refuse",
            Fault::BrokerClose => "broker-close",
            Fault::ChannelErrors { .. } => "channel-errors",
            Fault::MemoryAlarm => "memory-alarm",
            Fault::Poison => "poison",
            Fault::SlowConsumer => "slow-consumer",
        }
    }
}

/// A fault, how long it is held, and the quiet time after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The fault.
    pub fault: Fault,
    /// How long it is held (zero for instantaneous faults).
    pub hold: Duration,
    /// Quiet time after it.
    pub gap: Duration,
}

/// What shapes a schedule besides the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Fewer, shorter windows (the CI campaign).
    pub quick: bool,
    /// Whether memory alarms may be drawn.
    pub alarms: bool,
    /// The liveness timeout H the adapters run with: a blackhole is held
    /// longer than the detection bound 1.5 x H, so that the link is always
    /// declared dead before the blackhole lifts (the proxy discards what it
    /// reads meanwhile; a link that survived it would have a hole in its
    /// byte stream, which no real network makes).
    pub liveness: Duration,
    /// The last window's gap is at least this long: the quiet tail in
    /// which the engine must have recovered and lose no link.
    pub tail: Duration,
}

/// A run's faults, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The adapter.
    pub adapter: Adapter,
    /// Quiet time before the first window.
    pub lead: Duration,
    /// Messages published together per tick (same rate overall): bursts
    /// put several messages in flight at once.
    pub burst: u32,
    /// The windows.
    pub windows: Vec<Window>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "burst {} lead {}ms", self.burst, self.lead.as_millis())?;
        for w in &self.windows {
            write!(
                f,
                " | {} {}ms +{}ms",
                w.fault,
                w.hold.as_millis(),
                w.gap.as_millis()
            )?;
        }
        Ok(())
    }
}

impl Schedule {
    /// The schedule of `seed` for `adapter`.
    pub fn draw(seed: u64, adapter: Adapter, profile: Profile) -> Schedule {
        // Each adapter gets its own stream from the same seed.
        let salt = match adapter {
            Adapter::Amqp => 0xA11D_0001,
            Adapter::Mqtt => 0x3077_0002,
        };
        let mut rng = Draw(SplitMix64::new(seed ^ salt));
        let (count_lo, count_hi) = if profile.quick { (2, 3) } else { (3, 6) };
        let lead = rng.ms(300, 800);
        let burst = rng.u(1, 10) as u32;
        let count = rng.u(count_lo, count_hi) as usize;
        let faults = menu(adapter, profile.alarms);
        let total: u64 = faults.iter().map(|(_, w)| w).sum();
        let detect = profile.liveness.as_millis() as u64 * 3 / 2;
        let mut windows = Vec::with_capacity(count);
        for _ in 0..count {
            let mut pick = rng.u(0, total - 1);
            let mut fault = faults[0].0;
            for (f, w) in &faults {
                if pick < *w {
                    fault = *f;
                    break;
                }
                pick -= w;
            }
            let fault = match fault {
                Fault::ChannelErrors { .. } => Fault::ChannelErrors {
                    every: rng.u(2, 8) as u32,
                },
                other => other,
            };
            let hold = match fault {
                Fault::Sever | Fault::BrokerClose => Duration::ZERO,
                Fault::Blackhole => rng.ms(detect + 1_000, detect + 2_500),
                Fault::DropClientToBroker => rng.ms(1_500, 6_000),
                Fault::Refuse => rng.ms(500, 4_000),
                Fault::ChannelErrors { .. } => rng.ms(1_000, 3_000),
                // Short: the alarm blocks every publisher on the broker.
                Fault::MemoryAlarm => rng.ms(500, 1_500),
                Fault::Poison => rng.ms(500, 1_500),
                Fault::SlowConsumer => rng.ms(1_000, 3_000),
            };
            let gap = if profile.quick {
                rng.ms(500, 1_500)
            } else {
                rng.ms(500, 2_500)
            };
            windows.push(Window { fault, hold, gap });
        }
        if let Some(last) = windows.last_mut() {
            last.gap = last.gap.max(profile.tail);
        }
        Schedule {
            seed,
            adapter,
            lead,
            burst,
            windows,
        }
    }

    /// Whether any window raises a memory alarm.
    pub fn has_alarm(&self) -> bool {
        self.windows.iter().any(|w| w.fault == Fault::MemoryAlarm)
    }
}

/// The faults an adapter can get, with their weights.
fn menu(adapter: Adapter, alarms: bool) -> Vec<(Fault, u64)> {
    let mut m = vec![
        (Fault::Sever, 3),
        (Fault::Blackhole, 2),
        (Fault::DropClientToBroker, 2),
        (Fault::Refuse, 3),
        (Fault::SlowConsumer, 2),
    ];
    match adapter {
        Adapter::Amqp => {
            m.push((Fault::BrokerClose, 2));
            m.push((Fault::ChannelErrors { every: 0 }, 3));
            if alarms {
                // Rare: it is broker-wide.
                m.push((Fault::MemoryAlarm, 1));
            }
        }
        Adapter::Mqtt => m.push((Fault::Poison, 2)),
    }
    m
}

/// Draws from the seed's stream.
struct Draw(SplitMix64);

impl Draw {
    fn u(&mut self, lo: u64, hi: u64) -> u64 {
        self.0.uniform_inclusive(lo, hi)
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.u(lo, hi))
    }
}
