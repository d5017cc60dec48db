//! Embedding path (c) of `docs/embedding.md`: no tokio, no handle, no
//! extra threads. A plain blocking loop drives the sans-IO [`Machine`]:
//! `TcpStream::connect_timeout` is the open, a read with a timeout waits
//! for both the socket and the machine's next timer.
//!
//! ```sh
//! cargo run --example embed_blocking
//! ```
//!
//! The example starts a small server on `127.0.0.1:0` that sends a
//! heartbeat byte every 50 ms. It drops the first connection (the read sees
//! EOF: `LinkLost`), then goes silent on the second one while keeping it
//! open (half-open: the machine's liveness check declares it dead), and
//! behaves on the third, after which the program shuts down cleanly.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use redial::backoff::{Backoff, Jitter};
use redial::machine::{
    Config, ErrorKind, Generation, Input, Machine, Output, ProbeOutcome, StateKind,
};

/// Gives up (non-zero exit) if the demo has not finished by then.
const DEADLINE: Duration = Duration::from_secs(20);
/// Longest single wait, so that the loop notices a missed deadline.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// Server: connection 1 is dropped after 150 ms, connection 2 goes silent
/// after 150 ms, later ones get heartbeats until the client leaves.
fn server() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for (n, socket) in listener.incoming().enumerate() {
            let Ok(mut socket) = socket else { return };
            thread::spawn(move || {
                let started = Instant::now();
                loop {
                    let elapsed = started.elapsed();
                    if n == 0 && elapsed > Duration::from_millis(150) {
                        return; // drops the connection: the client reads EOF
                    }
                    let silent = n == 1 && elapsed > Duration::from_millis(150);
                    if !silent && socket.write_all(b".").is_err() {
                        return; // the client closed it
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    Ok(addr)
}

/// A transport error's kind: only a refused or unreachable peer is retried.
fn classify(error: &io::Error) -> ErrorKind {
    match error.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

fn main() -> ExitCode {
    let addr = match server() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("cannot start the server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config::builder()
        .backoff(
            Backoff::builder()
                .initial(Duration::from_millis(20))
                .multiplier(2.0)
                .max(Duration::from_millis(500))
                .jitter(Jitter::Full)
                .build()
                .expect("valid backoff"),
        )
        .connect_timeout(Duration::from_secs(2))
        // Heartbeats every 50 ms: dead after 300 ms of silence.
        .liveness_timeout(Duration::from_millis(300))
        .build()
        .expect("valid config");
    let connect_timeout = config.connect_timeout().expect("set above");
    let mut machine = Machine::new(config);
    let mut link: Option<(Generation, TcpStream)> = None;
    let mut links_up = 0;
    let started = Instant::now();

    machine.handle(Instant::now(), Input::Start);
    loop {
        if started.elapsed() > DEADLINE {
            eprintln!("gave up after {DEADLINE:?} in state {}", machine.kind());
            return ExitCode::FAILURE;
        }

        // 1. Execute every output, in order (a `Close` comes before the
        //    `Open` that replaces it). Inputs they cause are fed at once;
        //    their outputs join the queue.
        while let Some(output) = machine.poll(Instant::now()) {
            match output {
                Output::Open {
                    generation,
                    attempt,
                    ..
                } => {
                    println!("open link {generation} (attempt {attempt})");
                    match TcpStream::connect_timeout(&addr, connect_timeout) {
                        Ok(stream) => {
                            link = Some((generation, stream));
                            machine.handle(Instant::now(), Input::AttemptSucceeded { generation });
                        }
                        Err(e) => {
                            let kind = classify(&e);
                            machine.handle(Instant::now(), Input::failed(generation, kind));
                        }
                    }
                }
                Output::Close { generation, .. } => {
                    if let Some((g, stream)) = link.take_if(|(g, _)| *g == generation) {
                        println!("close link {g}");
                        let _ = stream.shutdown(Shutdown::Both);
                    }
                }
                // Only with `probe_interval` set (not here): a TCP connect,
                // then hang up, is this transport's cheap check.
                Output::Probe { probe, .. } => {
                    let outcome = match TcpStream::connect_timeout(&addr, connect_timeout) {
                        Ok(_) => ProbeOutcome::Reachable,
                        Err(_) => ProbeOutcome::Unreachable,
                    };
                    machine.handle(Instant::now(), Input::Probed { probe, outcome });
                }
                // Only after a resume without its session, which this
                // transport never reports (it has no resumes).
                Output::Restore { .. } => {}
                Output::StateChanged {
                    from, to, reason, ..
                } => {
                    println!("  {from} -> {to} ({reason:?})");
                    if to == StateKind::Connected {
                        links_up += 1;
                    }
                }
                Output::LivenessLost { generation, .. } => {
                    println!("  link {generation}: no heartbeat, declared dead");
                }
                Output::GaveUp { cause, .. } => println!("  gave up: {cause}"),
                // `Output` may grow: a driver logs what it does not know yet.
                other => println!("  output not handled here: {other:?}"),
            }
        }
        if machine.kind() == StateKind::Closed {
            break;
        }
        // After a shutdown, the close above has run: say so.
        if machine.kind() == StateKind::Closing && link.is_none() {
            machine.handle(Instant::now(), Input::CloseCompleted);
            continue;
        }
        // The demo is over once the third link is up.
        if links_up == 3 && machine.kind() == StateKind::Connected {
            println!("shutting down");
            machine.handle(Instant::now(), Input::Shutdown);
            continue;
        }

        // 2. Wait for the socket or the machine's timer, whichever is first.
        let wait = machine
            .poll_timeout()
            .map_or(MAX_WAIT, |t| t.saturating_duration_since(Instant::now()))
            .clamp(Duration::from_millis(1), MAX_WAIT);
        match &mut link {
            Some((generation, stream)) => {
                let generation = *generation;
                let _ = stream.set_read_timeout(Some(wait));
                let mut buf = [0u8; 64];
                let input = match stream.read(&mut buf) {
                    Ok(0) => Some(Input::lost(generation, ErrorKind::Transient)),
                    Ok(_) => Some(Input::Activity { generation }),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        None
                    }
                    Err(e) => Some(Input::lost(generation, classify(&e))),
                };
                if let Some(input) = input {
                    machine.handle(Instant::now(), input);
                }
            }
            None => thread::sleep(wait),
        }
        // A due timer fires in the next `poll`.
    }
    println!(
        "closed after {:?}: {} links opened, stats {:?}",
        started.elapsed(),
        machine.stats().opens,
        machine.stats()
    );
    if links_up == 3 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
