//! A private Mosquitto for tests that need their own broker configuration
//! (a password file, a broker to stop and start again): one `mosquitto -c`
//! process on a free loopback port, killed when dropped (only the process
//! this helper started).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether the `mosquitto` binary can be run.
pub fn binary_available() -> bool {
    Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether a private broker can be started: skips with a message, or fails
/// under `REDIAL_REQUIRE_BROKERS=1`, when the binary is missing.
pub fn require_private() -> bool {
    super::brokers::require("private mosquitto", binary_available())
}

/// How the private broker authenticates clients.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// Anyone may connect.
    #[default]
    Anonymous,
    /// Only this user (a password file made with `mosquitto_passwd`; when
    /// that tool is missing, nobody may connect, which also yields a
    /// CONNACK refusal).
    Password {
        /// The user name.
        user: String,
        /// Its password.
        password: String,
    },
}

/// A running (or stopped) private Mosquitto.
#[derive(Debug)]
pub struct Mosquitto {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    deep_queue: bool,
}

/// Queue everything for a subscriber that falls behind: the default (and
/// the system broker's) `max_queued_messages 1000` drops the rest, and a
/// witness would count those drops as messages redial lost.
const DEEP_QUEUE: &str = "max_queued_messages 0\nmax_queued_bytes 0\n";

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Mosquitto {
    /// A broker that never drops messages queued for a slow subscriber:
    /// the only kind a delivery-counting witness (`mqtt_util::Witness`)
    /// accepts.
    pub fn deep_queue() -> io::Result<Self> {
        let mut broker = Self::start_with(Auth::Anonymous, None, DEEP_QUEUE)?;
        broker.deep_queue = true;
        Ok(broker)
    }

    /// Whether the broker queues without limit for slow subscribers.
    pub fn is_deep_queue(&self) -> bool {
        self.deep_queue
    }

    /// Starts a broker on a free loopback port and waits until it accepts
    /// connections.
    pub fn start(auth: Auth) -> io::Result<Self> {
        Self::start_with_acl(auth, None)
    }

    /// Like [`Mosquitto::start`], with an ACL file holding `acl` (for
    /// example `"topic readwrite allowed/#"`: anything else is denied).
    pub fn start_with_acl(auth: Auth, acl: Option<&str>) -> io::Result<Self> {
        Self::start_with(auth, acl, "")
    }

    /// Like [`Mosquitto::start_with_acl`], with `extra` lines appended to the
    /// listener's configuration (for example `certfile`/`keyfile` for TLS).
    pub fn start_with(auth: Auth, acl: Option<&str>, extra: &str) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "redial-mosquitto-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             persistence false\n\
             log_dest file {log}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             connection_messages true\n\
             user root\n",
            log = dir.join("mosquitto.log").display(),
        );
        match &auth {
            Auth::Anonymous => conf.push_str("allow_anonymous true\n"),
            Auth::Password { user, password } => {
                conf.push_str("allow_anonymous false\n");
                let file = dir.join("passwd");
                let made = Command::new("mosquitto_passwd")
                    .arg("-c")
                    .arg("-b")
                    .arg(&file)
                    .arg(user)
                    .arg(password)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if made {
                    conf.push_str(&format!("password_file {}\n", file.display()));
                } else {
                    eprintln!("mosquitto_passwd is missing: the private broker refuses everyone");
                }
            }
        }
        if let Some(acl) = acl {
            let file = dir.join("acl");
            std::fs::write(&file, format!("{acl}\n"))?;
            conf.push_str(&format!("acl_file {}\n", file.display()));
        }
        conf.push_str(extra);
        conf.push('\n');
        std::fs::write(dir.join("mosquitto.conf"), conf)?;
        let mut broker = Self {
            dir,
            port,
            child: None,
            deep_queue: false,
        };
        broker.start_again()?;
        Ok(broker)
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether the broker process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the broker (as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and waits until it accepts
    /// connections.
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "mosquitto exited with {status}; log:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other("mosquitto did not start listening"))
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// The directory holding the configuration and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
