#!/usr/bin/env bash
# A three-node RabbitMQ cluster for the failover tests, next to the system
# broker (127.0.0.1:5672, rabbit@localhost), which this script never touches.
#
#   node          AMQP             distribution   state
#   c1@localhost  127.0.0.1:5681   25681          $REDIAL_RABBIT_CLUSTER_DIR/c1
#   c2@localhost  127.0.0.1:5682   25682          .../c2
#   c3@localhost  127.0.0.1:5683   25683          .../c3
#
# Usage: rabbit-cluster.sh start|stop|status
#        rabbit-cluster.sh start-node N   (brings node N back from any state:
#                                          VM down, app stopped; waits for it)
#        rabbit-cluster.sh kill-node N    (SIGKILL of node N's VM only)
#        rabbit-cluster.sh pid N          (prints node N's VM pid)
#
# `start` is idempotent: a healthy cluster returns at once; a formed cluster
# with nodes down is repaired (stopped apps and dead VMs are started again);
# anything else is wiped and built afresh. The nodes run as the rabbitmq user
# (like the system node, sharing its Erlang cookie): run this as root.
# Every rabbitmqctl call is bounded by `timeout`.
set -euo pipefail

BASE="${REDIAL_RABBIT_CLUSTER_DIR:-/tmp/redial-rabbit-cluster}"
LOCK_FILE="${BASE}.lock"
NODES=(1 2 3)
# Keep idle nodes cheap on a 2-core machine: one scheduler, no busy waiting.
ERL_ARGS="+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1}"
# rabbitmq-server and rabbitmqctl are the Debian wrappers in /usr/sbin: as
# root they run the real scripts as the rabbitmq user (its HOME, its cookie).
PATH="${PATH}:/usr/sbin:/sbin"

now_ms() { date +%s%3N; }
T0=$(now_ms)
elapsed() { local ms=$(($(now_ms) - T0)); printf '%d.%03ds' $((ms / 1000)) $((ms % 1000)); }
log() { printf '[rabbit-cluster %s] %s\n' "$(elapsed)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

node() { echo "c$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ctl SECONDS N ARGS...: rabbitmqctl against node N, bounded (without the
# lock's descriptor: an epmd it might start must not hold the lock).
ctl() {
  local secs=$1 n=$2
  shift 2
  timeout --kill-after=5 "$secs" rabbitmqctl -n "$(node "$n")" "$@" 9>&-
}

# Whether pid $2 is the VM of our node $1 (never the system broker: its
# environment names neither our node nor our state directory).
is_our_vm() {
  local n=$1 pid=$2 comm="" env
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  { read -r comm <"/proc/$pid/comm"; } 2>/dev/null || return 1
  [[ "$comm" == beam.smp ]] || return 1
  env=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ") || return 1
  grep -qxF "RABBITMQ_NODENAME=$(node "$n")" <<<"$env" &&
    grep -qxF "RABBITMQ_MNESIA_BASE=$BASE/c$n/mnesia" <<<"$env"
}

# Prints the pid of node N's VM (its pid file first, else a scan of /proc:
# a failed duplicate start deletes the pid file of the running node).
vm_pid() {
  local n=$1 pid p
  pid=$(cat "$BASE/c$n/pid" 2>/dev/null || true)
  if is_our_vm "$n" "$pid"; then
    echo "$pid"
    return 0
  fi
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    if is_our_vm "$n" "$p"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# The nodes of a cluster_status field (running_nodes, disk_nodes) as seen by node N.
cluster_field() {
  local n=$1 field=$2 out
  out=$(ctl 20 "$n" cluster_status --formatter json 2>/dev/null) || return 1
  grep -o "\"$field\":\[[^]]*\]" <<<"$out" | grep -o 'c[0-9]@localhost' | sort | tr '\n' ' '
}

ALL="c1@localhost c2@localhost c3@localhost "

healthy() {
  local n
  for n in "${NODES[@]}"; do port_open "$(amqp_port "$n")" || return 1; done
  [[ "$(cluster_field 1 running_nodes)" == "$ALL" ]]
}

write_node_files() {
  local n=$1 dir="$BASE/c$1"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
loopback_users = none
EOF
  echo '[].' >"$dir/enabled_plugins"
}

# Starts node N's VM in the background (detached, its own session). The VM
# must not inherit the lock's descriptor (9), or it would hold the lock forever.
start_vm() {
  local n=$1 dir="$BASE/c$1"
  env RABBITMQ_NODENAME="$(node "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$ERL_ARGS" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    timeout 60 rabbitmq-server -detached >>"$dir/start.out" 2>&1 9>&- ||
    log "$(node "$n"): rabbitmq-server -detached exited $?"
}

log_tail() {
  local n=$1
  log "last lines of $BASE/c$n/log/$(node "$n").log:"
  tail -n 15 "$BASE/c$n/log/$(node "$n").log" 2>/dev/null | sed 's/^/    /' >&2 || true
}

# Waits until node N's VM runs the rabbit app (AMQP port open).
await_node() {
  local n=$1 secs=${2:-120} deadline
  deadline=$((SECONDS + secs))
  # await_startup fails at once while the VM is not registered in epmd yet.
  until port_open "$(dist_port "$n")"; do
    if ((SECONDS > deadline)); then log_tail "$n"; die "$(node "$n"): no VM after ${secs}s"; fi
    if ((SECONDS > deadline - secs + 10)) && ! vm_pid "$n" >/dev/null; then
      log_tail "$n"
      die "$(node "$n"): the VM exited during boot"
    fi
    sleep 0.2
  done
  local left=$((deadline - SECONDS))
  ((left > 5)) || left=5
  if ! ctl $((left + 5)) "$n" await_startup --timeout "$left" >/dev/null 2>&1; then
    log_tail "$n"
    die "$(node "$n"): rabbit did not start within ${secs}s"
  fi
  until port_open "$(amqp_port "$n")"; do
    ((SECONDS < deadline)) || die "$(node "$n"): AMQP port $(amqp_port "$n") closed after startup"
    sleep 0.2
  done
  log "$(node "$n") is up (amqp 127.0.0.1:$(amqp_port "$n"))"
}

# Waits until node N sees all three nodes running.
await_clustered() {
  local via=${1:-1} secs=${2:-60} deadline seen=""
  deadline=$((SECONDS + secs))
  while :; do
    seen=$(cluster_field "$via" running_nodes || true)
    [[ "$seen" == "$ALL" ]] && return 0
    ((SECONDS < deadline)) || { log "running nodes seen by $(node "$via"): ${seen:-none}"; return 1; }
    sleep 0.5
  done
}

# Stops node N's VM: rabbitmqctl stop, else SIGKILL of its verified pid.
stop_node() {
  local n=$1 pid i
  pid=$(vm_pid "$n") || return 0
  ctl 30 "$n" stop >/dev/null 2>&1 || log "$(node "$n"): rabbitmqctl stop failed"
  for ((i = 0; i < 100; i++)); do
    is_our_vm "$n" "$pid" || { log "$(node "$n") stopped"; return 0; }
    sleep 0.2
  done
  log "$(node "$n") still runs: SIGKILL to pid $pid"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    is_our_vm "$n" "$pid" || return 0
    sleep 0.2
  done
  die "$(node "$n") (pid $pid) did not exit"
}

stop_all() {
  local n pids=()
  for n in "${NODES[@]}"; do
    stop_node "$n" &
    pids+=($!)
  done
  local rc=0
  for n in "${pids[@]}"; do wait "$n" || rc=1; done
  return $rc
}

# Builds the cluster from scratch: three fresh nodes, 2 and 3 join 1.
rebuild() {
  log "building a fresh cluster in $BASE"
  stop_all
  rm -rf "$BASE"
  local n
  for n in "${NODES[@]}"; do write_node_files "$n"; done
  chown -R rabbitmq:rabbitmq "$BASE"
  for n in "${NODES[@]}"; do start_vm "$n"; done
  local pids=()
  for n in "${NODES[@]}"; do
    await_node "$n" 120 &
    pids+=($!)
  done
  for n in "${pids[@]}"; do wait "$n" || die "a node did not boot"; done
  local out
  for n in 2 3; do
    out=$(ctl 60 "$n" stop_app 2>&1) || die "$(node "$n"): stop_app failed: $out"
    # (It logs harmless errors about the tables of a node not up yet.)
    out=$(ctl 60 "$n" join_cluster "$(node 1)" 2>&1) || die "$(node "$n"): join_cluster failed: $out"
    out=$(ctl 60 "$n" start_app 2>&1) || die "$(node "$n"): start_app failed: $out"
    log "$(node "$n") joined $(node 1)"
  done
  await_clustered 1 60 || die "the nodes did not form a cluster"
  touch "$BASE/formed"
}

# Brings the nodes of a formed cluster back: dead VMs are started (all at
# once: a restarting node waits for its peers), stopped apps are started.
repair() {
  local n started=() pids=()
  for n in "${NODES[@]}"; do
    if ! vm_pid "$n" >/dev/null; then
      log "$(node "$n"): VM down, starting it"
      start_vm "$n"
      started+=("$n")
    fi
  done
  for n in "${NODES[@]}"; do
    if [[ " ${started[*]} " != *" $n "* ]] && ! port_open "$(amqp_port "$n")"; then
      log "$(node "$n"): app down, start_app"
      ctl 120 "$n" start_app >/dev/null 2>&1 || { log "$(node "$n"): start_app failed"; return 1; }
    fi
  done
  for n in "${NODES[@]}"; do
    (await_node "$n" 150) &
    pids+=($!)
  done
  local rc=0
  for n in "${pids[@]}"; do wait "$n" || rc=1; done
  ((rc == 0)) || return 1
  # Every app is up: a node still missing is not a member (a broken state).
  await_clustered 1 20
}

check_env() {
  if ! command -v rabbitmq-server >/dev/null || ! command -v rabbitmqctl >/dev/null; then
    die "rabbitmq-server is not installed"
  fi
  [[ "$(id -u)" == 0 ]] || die "run as root (the nodes run as the rabbitmq user)"
  id rabbitmq >/dev/null 2>&1 || die "no rabbitmq user"
}

lock() {
  exec 9>"$LOCK_FILE"
  flock -w 600 9 || die "could not lock $LOCK_FILE"
}

node_arg() {
  [[ "${1:-}" =~ ^[123]$ ]] || die "a node number (1, 2 or 3) is required"
}

cmd_start() {
  check_env
  lock
  if healthy; then
    log "the cluster is already up: $ALL"
    return 0
  fi
  if [[ -f "$BASE/formed" ]]; then
    log "repairing the cluster in $BASE"
    if (repair); then
      log "cluster repaired: $ALL"
      return 0
    fi
    log "repair failed: rebuilding"
  fi
  rebuild
  log "cluster up: $ALL"
}

cmd_stop() {
  check_env
  lock
  stop_all
  log "stopped"
}

cmd_status() {
  local n ok=0 pid
  for n in "${NODES[@]}"; do
    pid=$(vm_pid "$n" || true)
    if port_open "$(amqp_port "$n")"; then
      echo "$(node "$n"): up (pid ${pid:-?}, amqp 127.0.0.1:$(amqp_port "$n"))"
    elif [[ -n "$pid" ]]; then
      echo "$(node "$n"): VM running (pid $pid), rabbit app not serving"
      ok=1
    else
      echo "$(node "$n"): down"
      ok=1
    fi
  done
  if ((ok == 0)); then
    local seen
    seen=$(cluster_field 1 running_nodes || true)
    echo "running nodes seen by $(node 1): ${seen:-none}"
    [[ "$seen" == "$ALL" ]] || ok=1
  fi
  return $ok
}

cmd_start_node() {
  local n=$1
  check_env
  lock
  [[ -f "$BASE/formed" ]] || die "no cluster in $BASE: run start"
  if ! vm_pid "$n" >/dev/null; then
    log "$(node "$n"): starting the VM"
    start_vm "$n"
  elif ! port_open "$(amqp_port "$n")"; then
    log "$(node "$n"): start_app"
    ctl 120 "$n" start_app >/dev/null 2>&1 || die "$(node "$n"): start_app failed"
  fi
  await_node "$n" 150
  # Still a member of the same cluster, not a fresh standalone node.
  local members
  members=$(cluster_field "$n" disk_nodes || true)
  [[ "$members" == "$ALL" ]] || die "$(node "$n") is not in the cluster (members: ${members:-none})"
}

cmd_kill_node() {
  local n=$1 pid i
  check_env
  pid=$(vm_pid "$n") || die "$(node "$n") is not running"
  kill -KILL "$pid"
  for ((i = 0; i < 100; i++)); do
    if ! is_our_vm "$n" "$pid" && ! port_open "$(dist_port "$n")"; then
      log "$(node "$n"): killed pid $pid"
      echo "$pid"
      return 0
    fi
    sleep 0.1
  done
  die "$(node "$n") (pid $pid) survived SIGKILL"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  start-node) node_arg "${2:-}" && cmd_start_node "$2" ;;
  kill-node) node_arg "${2:-}" && cmd_kill_node "$2" ;;
  pid) node_arg "${2:-}" && vm_pid "$2" ;;
  *)
    echo "usage: $0 start|stop|status|start-node N|kill-node N|pid N" >&2
    exit 2
    ;;
esac
