//! A chaos TCP proxy for broker tests (shared by the AMQP and MQTT suites).
//!
//! It listens on `127.0.0.1:0`, forwards every accepted connection to one
//! upstream address and, on command:
//! * [`ChaosProxy::sever`] resets every open connection (SO_LINGER 0, then
//!   close: both the client and the broker see an RST);
//! * [`ChaosProxy::blackhole`] stops forwarding in both directions while
//!   keeping every socket open (a half-open link). Bytes that arrive on an
//!   existing connection meanwhile are read and dropped, so the proxy still
//!   notices a side closing; a connection accepted meanwhile waits, unread
//!   and not yet dialled upstream, until the blackhole lifts;
//! * [`ChaosProxy::blackhole_swallowing`] is a blackhole in which a
//!   connection accepted meanwhile is never forwarded, not even after the
//!   blackhole lifts (its bytes are read and dropped until the client gives
//!   up), as in a partition that lost the SYNs and first bytes of the
//!   connections made during it: only a connection made after it heals
//!   works;
//! * [`ChaosProxy::refuse`] accepts new connections and resets them at once
//!   (counted by [`ChaosProxy::refused`], not by [`ChaosProxy::accepted`]);
//! * [`ChaosProxy::drop_publishes`] drops, on AMQP 0-9-1 connections only,
//!   every client `basic.publish` (the method frame and its header and body
//!   frames) while forwarding every other frame, heartbeats included: the
//!   link stays alive and confirms nothing (counted by
//!   [`ChaosProxy::dropped_publishes`]). A connection is AMQP when the
//!   client opens it with the AMQP 0-9-1 protocol header; others (MQTT) are
//!   forwarded byte for byte as always.
//! * [`ChaosProxy::drop_client_to_broker`] stops the client-to-broker
//!   direction only, as a one-way partition does (see that section below).
//!
//! Dropping the proxy stops the listener and closes every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What every connection task watches.
#[derive(Debug, Clone, Copy, Default)]
struct Ctl {
    /// Bumped by every `sever()`.
    sever_epoch: u64,
    blackhole: bool,
    /// Connections accepted during the blackhole are never forwarded.
    swallow: bool,
    stopped: bool,
    drop_publishes: bool,
    /// `drop_client_to_broker(true)`: the client-to-broker pump is paused.
    client_to_broker_dropped: bool,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: Mutex<Vec<Instant>>,
    refused: AtomicUsize,
    open: AtomicUsize,
    refuse: AtomicBool,
    dropped_publishes: AtomicUsize,
}

/// A TCP proxy that can sever, blackhole and refuse connections on command.
#[derive(Debug)]
pub struct ChaosProxy {
    addr: SocketAddr,
    ctl: watch::Sender<Ctl>,
    counters: Arc<Counters>,
    accept_task: JoinHandle<()>,
}

/// Starts a proxy on `127.0.0.1:0` that forwards to `upstream`.
pub async fn start(upstream: SocketAddr) -> std::io::Result<ChaosProxy> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let (ctl, _) = watch::channel(Ctl::default());
    let counters = Arc::new(Counters::default());
    let accept_task = tokio::spawn(accept_loop(
        listener,
        upstream,
        ctl.clone(),
        counters.clone(),
    ));
    Ok(ChaosProxy {
        addr,
        ctl,
        counters,
        accept_task,
    })
}

impl ChaosProxy {
    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets (RST) every open connection, on both sides.
    pub fn sever(&self) {
        self.ctl.send_modify(|c| c.sever_epoch += 1);
    }

    /// Stops (`true`) or resumes (`false`) forwarding in both directions,
    /// keeping the sockets open.
    pub fn blackhole(&self, on: bool) {
        self.ctl.send_modify(|c| c.blackhole = on);
    }

    /// A blackhole (`true`) whose new connections stay dead after it lifts
    /// (`false` lifts it).
    pub fn blackhole_swallowing(&self, on: bool) {
        self.ctl.send_modify(|c| {
            c.blackhole = on;
            c.swallow = on;
        });
    }

    /// While on, new connections are accepted and reset at once.
    pub fn refuse(&self, on: bool) {
        self.counters.refuse.store(on, Ordering::SeqCst);
    }

    /// When each forwarded (not refused) connection was accepted.
    pub fn accepted(&self) -> Vec<Instant> {
        self.counters.accepted.lock().unwrap().clone()
    }

    /// How many connections were refused.
    pub fn refused(&self) -> usize {
        self.counters.refused.load(Ordering::SeqCst)
    }

    /// While on, client `basic.publish` frames on AMQP connections are
    /// dropped; every other frame is forwarded.
    pub fn drop_publishes(&self, on: bool) {
        self.ctl.send_modify(|c| c.drop_publishes = on);
    }

    /// How many `basic.publish` frames were dropped.
    pub fn dropped_publishes(&self) -> usize {
        self.counters.dropped_publishes.load(Ordering::SeqCst)
    }

    /// How many forwarded connections are open right now.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.ctl.send_modify(|c| c.stopped = true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    ctl: watch::Sender<Ctl>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if counters.refuse.load(Ordering::SeqCst) {
            counters.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let _ = client.set_nodelay(true);
        counters.accepted.lock().unwrap().push(Instant::now());
        counters.open.fetch_add(1, Ordering::SeqCst);
        let rx = ctl.subscribe();
        let counters = counters.clone();
        tokio::spawn(async move {
            connection(client, upstream, rx, &counters).await;
            counters.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Why a pump (or a wait) ended.
enum End {
    /// One side closed or failed: close the other one normally.
    Closed,
    /// `sever()`: reset both sides.
    Sever,
    /// The proxy was dropped.
    Stopped,
}

/// Waits for the next control change; tells whether it ends the connection.
async fn next_ctl(ctl: &mut watch::Receiver<Ctl>, epoch: u64) -> Option<End> {
    if ctl.changed().await.is_err() {
        return Some(End::Stopped);
    }
    let now = *ctl.borrow_and_update();
    if now.stopped {
        Some(End::Stopped)
    } else if now.sever_epoch != epoch {
        Some(End::Sever)
    } else {
        None
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut ctl: watch::Receiver<Ctl>,
    counters: &Counters,
) {
    let epoch = ctl.borrow_and_update().sever_epoch;
    if ctl.borrow().swallow {
        swallow(client, ctl, epoch).await;
        return;
    }
    // A connection accepted during a blackhole waits for it to lift.
    while ctl.borrow().blackhole {
        if let Some(end) = next_ctl(&mut ctl, epoch).await {
            if matches!(end, End::Sever) {
                let _ = client.set_zero_linger();
            }
            return;
        }
    }
    let server = tokio::select! {
        server = TcpStream::connect(upstream) => server,
        end = async { loop { if let Some(end) = next_ctl(&mut ctl, epoch).await { break end } } } => {
            if matches!(end, End::Sever) {
                let _ = client.set_zero_linger();
            }
            return;
        }
    };
    let Ok(server) = server else {
        // The upstream is down: reset the client as a dead broker would.
        let _ = client.set_zero_linger();
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let end = tokio::select! {
        end = paused_while_client_to_broker_dropped(pump(&mut cr, &mut sw, ctl.clone(), epoch, Some(counters)), ctl.clone()) => end,
        end = pump(&mut sr, &mut cw, ctl.clone(), epoch, None) => end,
    };
    if matches!(end, End::Sever) {
        let _ = cr.as_ref().set_zero_linger();
        let _ = sr.as_ref().set_zero_linger();
        // A dropped write half sends a FIN first; forgetting it leaves the
        // close (an RST, with linger 0) to the read half.
        cw.forget();
        sw.forget();
    }
}

/// Holds a connection that will never be forwarded: reads and drops its
/// bytes until the client closes it, or until a sever or the proxy's end.
async fn swallow(mut client: TcpStream, mut ctl: watch::Receiver<Ctl>, epoch: u64) {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            read = client.read(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
            end = next_ctl(&mut ctl, epoch) => {
                if let Some(end) = end {
                    if matches!(end, End::Sever) {
                        let _ = client.set_zero_linger();
                    }
                    return;
                }
            }
        }
    }
}

/// The AMQP 0-9-1 protocol header a client opens with.
const AMQP_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Splits a client's AMQP byte stream into frames and drops the publishes
/// (a `basic.publish` method frame, then its header and body frames).
#[derive(Debug, Default)]
struct PublishFilter {
    /// Bytes not yet forwarded: the protocol header, then whole frames.
    pending: Vec<u8>,
    header_seen: bool,
    /// Channels whose current publish is being dropped (its content follows).
    dropping: std::collections::HashSet<u16>,
}

impl PublishFilter {
    /// Takes `bytes`, returns what to forward (whole frames only).
    fn feed(&mut self, bytes: &[u8], drop_publishes: bool, dropped: &AtomicUsize) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        if !self.header_seen {
            if self.pending.len() < AMQP_HEADER.len() {
                return out;
            }
            out.extend_from_slice(&self.pending[..AMQP_HEADER.len()]);
            at = AMQP_HEADER.len();
            self.header_seen = true;
        }
        // A frame: type (1), channel (2), size (4), payload, 0xCE.
        while self.pending.len() - at >= 7 {
            let p = &self.pending[at..];
            let kind = p[0];
            let channel = u16::from_be_bytes([p[1], p[2]]);
            let size = u32::from_be_bytes([p[3], p[4], p[5], p[6]]) as usize;
            let total = 7 + size + 1;
            if p.len() < total {
                break;
            }
            let publish = kind == 1 && size >= 4 && p[7..11] == [0, 60, 0, 40];
            let drop = match kind {
                1 => {
                    self.dropping.remove(&channel);
                    if publish && drop_publishes {
                        self.dropping.insert(channel);
                        dropped.fetch_add(1, Ordering::SeqCst);
                        true
                    } else {
                        false
                    }
                }
                2 | 3 => self.dropping.contains(&channel),
                _ => false,
            };
            if !drop {
                out.extend_from_slice(&p[..total]);
            }
            at += total;
        }
        self.pending.drain(..at);
        out
    }
}

/// Copies `from` to `to` until one side closes or the control says stop;
/// drops what it reads while blackholed. With `filter` (the client's side),
/// an AMQP connection goes through a [`PublishFilter`].
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut ctl: watch::Receiver<Ctl>,
    epoch: u64,
    filter: Option<&Counters>,
) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    // Undecided until the first bytes show whether the client speaks AMQP.
    let mut amqp: Option<Option<PublishFilter>> = filter.is_none().then_some(None);
    let mut first: Vec<u8> = Vec::new();
    loop {
        let n = tokio::select! {
            biased;
            end = next_ctl(&mut ctl, epoch) => match end {
                Some(end) => return end,
                None => continue,
            },
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            },
        };
        if ctl.borrow().blackhole {
            continue;
        }
        let bytes: Vec<u8> = match (&mut amqp, filter) {
            (Some(Some(f)), Some(counters)) => f.feed(
                &buf[..n],
                ctl.borrow().drop_publishes,
                &counters.dropped_publishes,
            ),
            (Some(None), _) | (_, None) => buf[..n].to_vec(),
            (None, Some(counters)) => {
                // Decide on the first bytes: the AMQP protocol header or not.
                first.extend_from_slice(&buf[..n]);
                let len = first.len().min(AMQP_HEADER.len());
                if first[..len] != AMQP_HEADER[..len] {
                    amqp = Some(None);
                    std::mem::take(&mut first)
                } else if first.len() >= AMQP_HEADER.len() {
                    let mut f = PublishFilter::default();
                    let out = f.feed(
                        &std::mem::take(&mut first),
                        ctl.borrow().drop_publishes,
                        &counters.dropped_publishes,
                    );
                    amqp = Some(Some(f));
                    out
                } else {
                    continue;
                }
            }
        };
        if bytes.is_empty() {
            continue;
        }
        tokio::select! {
            biased;
            end = async { loop { if let Some(end) = next_ctl(&mut ctl, epoch).await { break end } } } => return end,
            written = to.write_all(&bytes) => if written.is_err() { return End::Closed },
        }
    }
}

// ---------------------------------------------------------------------------
// Client-to-broker-only drop (a one-way partition).

impl ChaosProxy {
    /// While on, nothing the client sends reaches the broker; the broker's
    /// traffic still reaches the client (its heartbeats, its acks of what it
    /// got before). The client-to-broker pump is paused rather than made to
    /// discard: as with dropped packets that TCP keeps retransmitting, the
    /// bytes wait and arrive, in order, if the drop lifts before a side gives
    /// up (a discarding proxy would cut frames out of the middle of the
    /// stream, which no real network does). New connections are dialled
    /// upstream; their first bytes wait too.
    pub fn drop_client_to_broker(&self, on: bool) {
        self.ctl.send_modify(|c| c.client_to_broker_dropped = on);
    }
}

/// Polls `pump` only while the client-to-broker drop is off: pausing the
/// future (never cancelling it) keeps a half-written buffer intact.
async fn paused_while_client_to_broker_dropped(
    pump: impl std::future::Future<Output = End>,
    mut ctl: watch::Receiver<Ctl>,
) -> End {
    let mut pump = std::pin::pin!(pump);
    loop {
        if ctl.borrow_and_update().client_to_broker_dropped {
            if ctl.changed().await.is_err() {
                return End::Stopped;
            }
            continue;
        }
        tokio::select! {
            end = &mut pump => return end,
            changed = ctl.changed() => if changed.is_err() { return End::Stopped },
        }
    }
}
