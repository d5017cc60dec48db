//! A real three-node RabbitMQ cluster for failover tests, run by
//! `.ci/rabbit-cluster.sh` next to the system broker (which is never
//! touched): nodes `c1@localhost`..`c3@localhost`, AMQP on
//! 127.0.0.1:5681..5683, state in `/tmp/redial-rabbit-cluster`.
//!
//! Nodes are numbered 1..=3. Every external command is bounded by a
//! timeout; failures are panics that say what failed and how. The helpers
//! block (they run `rabbitmqctl`): call them from a test's own thread, or
//! from its runtime when nothing else on it needs to run meanwhile.
//!
//! Tests that stop, kill or restart nodes take [`RabbitCluster::exclusive`]
//! first: it serialises them within the test binary, brings every node up
//! before the test, and again when the test ends, even by a panic.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, RangeInclusive};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The nodes' numbers.
pub const NODES: RangeInclusive<usize> = 1..=3;

/// The first node's AMQP port; node `n` listens on `AMQP_BASE_PORT + n - 1`.
const AMQP_BASE_PORT: u16 = 5681;

/// How long a whole `start` may take (a cold build takes ~30 s on 2 cores).
const START_LIMIT: Duration = Duration::from_secs(600);
/// How long a node may take to come back (`start_app`, `restart`).
const NODE_LIMIT: Duration = Duration::from_secs(180);
/// How long one plain `rabbitmqctl` query may take.
const QUERY_LIMIT: Duration = Duration::from_secs(30);

/// The cluster (see the module's documentation).
#[derive(Debug)]
pub struct RabbitCluster {
    script: PathBuf,
    rabbitmqctl: String,
    rabbitmq_queues: String,
}

/// The running cluster: started by the first call in the process (through
/// `.ci/rabbit-cluster.sh start`, a no-op when it is already up). `None`,
/// after a `SKIPPED` reason on stderr, when it cannot run here; a panic
/// instead under `REDIAL_REQUIRE_BROKERS=1`.
pub fn rabbit_cluster() -> Option<&'static RabbitCluster> {
    static CLUSTER: OnceLock<Result<RabbitCluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(RabbitCluster::bring_up) {
        Ok(cluster) => Some(cluster),
        Err(reason) => {
            eprintln!("SKIPPED: the RabbitMQ cluster is unavailable: {reason}");
            super::brokers::require("RabbitMQ cluster", false);
            None
        }
    }
}

/// `name` in the usual system directories, else the bare name (for `PATH`).
fn program(name: &str) -> String {
    ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .map_or_else(|| name.to_owned(), |path| path.display().to_string())
}

/// What a command printed and how it ended.
struct Run {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs `program args` under coreutils `timeout` (which also kills what it
/// started), with a backstop deadline of our own: never hangs.
fn run(program: &str, args: &[&str], limit: Duration) -> Result<Run, String> {
    let what = format!("`{program} {}`", args.join(" "));
    let mut child = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(limit.as_secs().max(1).to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what} could not start: {e}"))?;
    let mut stdout = child.stdout.take().expect("a piped stdout");
    let mut stderr = child.stderr.take().expect("a piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        let reader = std::thread::spawn(move || {
            let _ = stderr.read_to_string(&mut err);
            err
        });
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let err = reader.join().unwrap_or_default();
        let _ = tx.send((child.wait(), out, err));
    });
    match rx.recv_timeout(limit + Duration::from_secs(15)) {
        Ok((Ok(status), stdout, stderr)) => Ok(Run {
            ok: status.success(),
            status: if status.code() == Some(124) {
                format!("timed out after {limit:?}")
            } else {
                status.to_string()
            },
            stdout,
            stderr,
        }),
        Ok((Err(e), _, _)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what} did not finish within {limit:?}")),
    }
}

/// `run`, requiring success; the error tells what was printed.
fn run_ok(program: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let out = run(program, args, limit)?;
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(format!(
            "`{program} {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            out.stdout,
            out.stderr
        ))
    }
}

fn check(n: usize) {
    assert!(NODES.contains(&n), "no cluster node {n} (nodes are 1..=3)");
}

/// Polls `cond` every 100 ms until it holds, for at most `limit`.
fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node names listed under `field` in `cluster_status --formatter json`.
fn nodes_in(status: &serde_json::Value, field: &str) -> Vec<String> {
    let mut nodes: Vec<String> = status[field]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

impl RabbitCluster {
    fn bring_up() -> Result<Self, String> {
        let cluster = RabbitCluster {
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/rabbit-cluster.sh"),
            rabbitmqctl: program("rabbitmqctl"),
            rabbitmq_queues: program("rabbitmq-queues"),
        };
        if !Path::new(&program("rabbitmq-server")).exists() {
            return Err("rabbitmq-server is not installed".to_owned());
        }
        let started = Instant::now();
        cluster.script_run(&["start"], START_LIMIT)?;
        eprintln!(
            "RabbitMQ cluster ready in {:?} ({})",
            started.elapsed(),
            cluster.uris().join(", ")
        );
        Ok(cluster)
    }

    /// Runs `.ci/rabbit-cluster.sh args`, echoing its log (timing) to stderr.
    fn script_run(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let script = self.script.display().to_string();
        let mut full = vec![script.as_str()];
        full.extend_from_slice(args);
        let out = run("bash", &full, limit)?;
        if out.ok {
            eprint!("{}", out.stderr);
            Ok(out.stdout)
        } else {
            Err(format!(
                "`{} {}` failed ({}):\n{}{}",
                self.script.display(),
                args.join(" "),
                out.status,
                out.stdout,
                out.stderr
            ))
        }
    }

    /// `rabbitmqctl -n cN@localhost args`, bounded.
    fn ctl(&self, n: usize, args: &[&str], limit: Duration) -> Result<String, String> {
        let node = Self::node_name(n);
        let mut full = vec!["-n", node.as_str()];
        full.extend_from_slice(args);
        run_ok(&self.rabbitmqctl, &full, limit)
    }

    fn cluster_status(&self, via: usize) -> Result<serde_json::Value, String> {
        let out = self.ctl(via, &["cluster_status", "--formatter", "json"], QUERY_LIMIT)?;
        serde_json::from_str(&out).map_err(|e| format!("cluster_status of node {via}: {e}: {out}"))
    }

    /// The nodes' numbers.
    pub fn nodes(&self) -> RangeInclusive<usize> {
        NODES
    }

    /// `cN@localhost`.
    pub fn node_name(n: usize) -> String {
        check(n);
        format!("c{n}@localhost")
    }

    /// Every node's name, in order.
    pub fn all_node_names() -> Vec<String> {
        NODES.map(Self::node_name).collect()
    }

    /// Node `n`'s AMQP address (127.0.0.1:568n).
    pub fn addr(&self, n: usize) -> SocketAddr {
        check(n);
        SocketAddr::from(([127, 0, 0, 1], AMQP_BASE_PORT + n as u16 - 1))
    }

    /// `amqp://guest:guest@127.0.0.1:568n/%2f`.
    pub fn uri(&self, n: usize) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr(n))
    }

    /// Every node's URI, in order.
    pub fn uris(&self) -> Vec<String> {
        NODES.map(|n| self.uri(n)).collect()
    }

    /// Whether node `n` accepts TCP connections on its AMQP port (its rabbit
    /// app runs: the port closes with `stop_app`).
    pub fn is_serving(&self, n: usize) -> bool {
        TcpStream::connect_timeout(&self.addr(n), Duration::from_millis(500)).is_ok()
    }

    /// The pid of node `n`'s Erlang VM, if it runs.
    pub fn pid(&self, n: usize) -> Option<u32> {
        check(n);
        self.script_run(&["pid", &n.to_string()], QUERY_LIMIT)
            .ok()
            .and_then(|out| out.trim().parse().ok())
    }

    /// The nodes running the rabbit app, as node `via` sees them (sorted).
    pub fn running_nodes(&self, via: usize) -> Vec<String> {
        let status = self.cluster_status(via).unwrap_or_else(|e| panic!("{e}"));
        nodes_in(&status, "running_nodes")
    }

    /// The cluster's members, running or not, as node `via` sees them.
    pub fn members(&self, via: usize) -> Vec<String> {
        let status = self.cluster_status(via).unwrap_or_else(|e| panic!("{e}"));
        nodes_in(&status, "disk_nodes")
    }

    /// Stops the rabbit app of node `n` (its VM keeps running): its clients
    /// are disconnected and its port closes. Returns once the port is closed.
    pub fn stop_app(&self, n: usize) {
        let started = Instant::now();
        self.ctl(n, &["stop_app"], NODE_LIMIT)
            .unwrap_or_else(|e| panic!("stop_app of node {n}: {e}"));
        assert!(
            poll(Duration::from_secs(30), || !self.is_serving(n)),
            "node {n}'s AMQP port still accepts connections after stop_app"
        );
        eprintln!("cluster: node {n} app stopped in {:?}", started.elapsed());
    }

    /// Starts the rabbit app of node `n` again; returns once it serves AMQP
    /// and the other nodes see it running.
    pub fn start_app(&self, n: usize) {
        let started = Instant::now();
        self.ctl(n, &["start_app"], NODE_LIMIT)
            .unwrap_or_else(|e| panic!("start_app of node {n}: {e}"));
        self.await_rejoined(n);
        eprintln!("cluster: node {n} app started in {:?}", started.elapsed());
    }

    /// SIGKILL of node `n`'s Erlang VM (that node's only, found through its
    /// pid file and checked against its environment). Returns the dead pid
    /// once its ports are closed.
    pub fn kill(&self, n: usize) -> u32 {
        check(n);
        let out = self
            .script_run(&["kill-node", &n.to_string()], QUERY_LIMIT)
            .unwrap_or_else(|e| panic!("kill of node {n}: {e}"));
        let pid = out
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("kill-node {n} printed no pid: {out:?}"));
        assert!(
            poll(Duration::from_secs(10), || !self.is_serving(n)),
            "node {n}'s AMQP port still open after SIGKILL of pid {pid}"
        );
        pid
    }

    /// Brings node `n` back from any state (after `kill`: a new VM with the
    /// same environment, which rejoins the cluster from its own data; after
    /// `stop_app`: `start_app`). Returns once it serves AMQP and the other
    /// nodes see it running.
    pub fn restart(&self, n: usize) {
        check(n);
        let started = Instant::now();
        self.script_run(&["start-node", &n.to_string()], NODE_LIMIT)
            .unwrap_or_else(|e| panic!("restart of node {n}: {e}"));
        self.await_rejoined(n);
        eprintln!("cluster: node {n} restarted in {:?}", started.elapsed());
    }

    /// Waits until node `n` serves AMQP and a running node (another one when
    /// there is one) lists it among the running nodes.
    fn await_rejoined(&self, n: usize) {
        let name = Self::node_name(n);
        let mut last = String::new();
        let rejoined = poll(Duration::from_secs(60), || {
            if !self.is_serving(n) {
                last = format!("node {n} does not serve AMQP");
                return false;
            }
            let via = NODES
                .filter(|&m| m != n)
                .find(|&m| self.is_serving(m))
                .unwrap_or(n);
            match self.cluster_status(via) {
                Ok(status) => {
                    let running = nodes_in(&status, "running_nodes");
                    last = format!("running nodes seen by node {via}: {running:?}");
                    running.contains(&name)
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        assert!(rejoined, "node {n} did not rejoin the cluster: {last}");
    }

    /// Whether every node serves AMQP and node 1 sees all three running.
    fn all_running(&self) -> bool {
        NODES.into_iter().all(|n| self.is_serving(n))
            && self
                .cluster_status(1)
                .is_ok_and(|s| nodes_in(&s, "running_nodes") == Self::all_node_names())
    }

    fn try_ensure_all_running(&self) -> Result<(), String> {
        if self.all_running() {
            return Ok(());
        }
        let started = Instant::now();
        self.script_run(&["start"], START_LIMIT)?;
        if !self.all_running() {
            return Err("the cluster is still not fully running after `start`".to_owned());
        }
        eprintln!("cluster: every node restored in {:?}", started.elapsed());
        Ok(())
    }

    /// Brings every node back (stopped apps, dead VMs) and waits until the
    /// three run clustered; a quick check when they already do.
    pub fn ensure_all_running(&self) {
        self.try_ensure_all_running()
            .unwrap_or_else(|e| panic!("restoring the cluster: {e}"));
    }

    /// Serialises the tests of this binary that stop, kill or restart nodes
    /// and makes sure every node runs before; the guard restores every node
    /// when dropped, also when the test panics.
    pub fn exclusive(&'static self) -> Exclusive {
        static BUSY: Mutex<bool> = Mutex::new(false);
        static FREE: Condvar = Condvar::new();
        {
            let mut busy = BUSY.lock().unwrap_or_else(PoisonError::into_inner);
            while *busy {
                busy = FREE.wait(busy).unwrap_or_else(PoisonError::into_inner);
            }
            *busy = true;
        }
        let guard = Exclusive {
            cluster: self,
            release: || {
                *BUSY.lock().unwrap_or_else(PoisonError::into_inner) = false;
                FREE.notify_one();
            },
        };
        self.ensure_all_running();
        guard
    }

    /// The AMQP client connections on node `n` (those made to its port),
    /// from `rabbitmqctl list_connections`; 0 when its app does not run.
    pub fn connections(&self, n: usize) -> usize {
        check(n);
        let Some(via) = std::iter::once(n)
            .chain(NODES)
            .find(|&m| self.is_serving(m))
        else {
            return 0;
        };
        let out = self
            .ctl(
                via,
                &["list_connections", "port", "--formatter", "json"],
                QUERY_LIMIT,
            )
            .unwrap_or_else(|e| panic!("list_connections via node {via}: {e}"));
        let list: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("list_connections output: {e}: {out}"));
        let port = u64::from(self.addr(n).port());
        list.as_array()
            .map_or(0, |l| l.iter().filter(|c| c["port"] == port).count())
    }

    /// The members of quorum queue `queue` (in vhost `/`) and their Raft
    /// states (`leader`, `follower`, `noproc`...), as node `via` sees them.
    pub fn quorum_status(&self, via: usize, queue: &str) -> Result<Vec<(String, String)>, String> {
        let node = Self::node_name(via);
        let out = run_ok(
            &self.rabbitmq_queues,
            &["-n", &node, "quorum_status", queue, "--formatter", "json"],
            QUERY_LIMIT,
        )?;
        let list: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| format!("quorum_status of {queue}: {e}: {out}"))?;
        let members = list
            .as_array()
            .ok_or_else(|| format!("quorum_status of {queue}: not a list: {out}"))?
            .iter()
            .map(|m| {
                let field = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                (field("Node Name"), field("Raft State"))
            })
            .collect();
        Ok(members)
    }

    /// Waits until quorum queue `queue` has a leader and `online` members
    /// that are leader or follower, as a serving node sees it.
    pub fn await_quorum(&self, queue: &str, online: usize, limit: Duration) {
        let mut last = String::new();
        let ok = poll(limit, || {
            let Some(via) = NODES.into_iter().find(|&m| self.is_serving(m)) else {
                last = "no node serves".to_owned();
                return false;
            };
            match self.quorum_status(via, queue) {
                Ok(members) => {
                    let up = members
                        .iter()
                        .filter(|(_, s)| s == "leader" || s == "follower")
                        .count();
                    let led = members.iter().any(|(_, s)| s == "leader");
                    last = format!("{members:?}");
                    led && up >= online
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        assert!(
            ok,
            "quorum queue {queue} did not get a leader and {online} members online within {limit:?}: {last}"
        );
    }
}

/// Exclusive use of the cluster (see [`RabbitCluster::exclusive`]).
pub struct Exclusive {
    cluster: &'static RabbitCluster,
    release: fn(),
}

impl Deref for Exclusive {
    type Target = RabbitCluster;
    fn deref(&self) -> &RabbitCluster {
        self.cluster
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        // It may run while a failed test unwinds: report, never panic
        // (`try_ensure_all_running` returns its errors).
        if let Err(e) = self.cluster.try_ensure_all_running() {
            eprintln!("cluster: could not restore every node: {e}");
        }
        (self.release)();
    }
}
