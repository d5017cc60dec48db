/*
 * redial's protocol as a finite model for SPIN: the machine (docs/spec.md
 * sections 8 to 12), the handle's mailbox (src/runtime/shared.rs), the
 * driver's take-work / step / execute loop (15.1), an asynchronous
 * transport whose callbacks about any link may arrive late, twice or out of
 * order, the user's reconnect and shutdown, and the outbox (delivery.md):
 * writes, confirms by (link, delivery tag), replays and deadlines.
 *
 * docs/model/README.md maps every variable and process to the spec and the
 * Rust code; docs/model/check.sh runs the checks and the mutants.
 *
 * Mutants (compile with -D<name>; each must make SPIN find a violation):
 *   NO_GEN_CHECK       reports are not checked against the current
 *                      generation, at the handle or in the machine
 *   OPEN_BEFORE_CLOSE  the driver runs a step's `open` before its `close`
 *   SHARED_TAGS        confirms are looked up by delivery tag alone, as if
 *                      tags did not restart on every link
 *   COMMANDS_FIRST     the driver takes commands before reports (S41)
 * and, for the liveness properties:
 *   NO_BACKOFF_TIMER   the driver never fires the backoff timer
 *   NO_REPLAY          the outbox does not put back what was in flight on
 *                      a lost link
 *
 * Two compositions: the engine (default: driver, machine, handle,
 * transport, a reporter thread, the user) and the outbox (-DOUTBOX: writer,
 * broker, deadlines, over links that come and go one at a time, which the
 * engine composition proves the engine does).
 */

/* ---- bounds ------------------------------------------------------------ */
#ifndef MAXGEN
#define MAXGEN   5   /* generations 1..MAXGEN-1 can be issued */
#endif
#ifndef FAULTS
#define FAULTS   3   /* failed attempts, losses and timeouts of live links */
#endif
#define NMSG     2   /* messages published */
#define MAXTAG   4   /* delivery tags per link */

/* ---- the machine (driver-owned, section 7) ----------------------------- */
mtype:st = { IDLE, CONNECTING, CONNECTED, BACKING_OFF, CLOSING, CLOSED, FAILED };
mtype:in = { START, ADOPT, SUCCEEDED, ATT_FAILED, LOST, RESUMED, RECONNECT,
             SHUTDOWN, CLOSE_DONE, TIMEOUT };

mtype:st state = IDLE;
byte gen = 1;            /* the current generation (7.3) */
bool lingering = false;  /* backing_off with the lost link kept (13) */
bool grace;              /* config: resume_grace set (chosen at init) */
bool shut = false;       /* a shutdown was handled: nothing opens after */

/* outputs of one step, executed in order by the driver (15.1 rule 2) */
byte out_close = 0;      /* close(g), 0: none */
byte out_open = 0;       /* open(g), 0: none */

/* ---- the handle (src/runtime/shared.rs) -------------------------------- */
byte snap_gen = 1;       /* snapshot: what reporters compare against */
byte mbox_gen = 1;       /* mailbox word: generation ... */
bool mbox_lost = false;  /* ... and the events merged for it */
bool mbox_resumed = false;
bool cmd_reconnect = false;
bool cmd_shutdown = false;

/* ghosts: what really happened, for the assertions */
bool reported_lost[MAXGEN];  /* a loss of link g was reported (by anyone) */
bool reported_resumed[MAXGEN];  /* a resume of link g was reported */
bool after_sd = false;       /* the mailbox holds a loss reported after a
                                shutdown request, by the requesting thread */
bool took_after_sd = false;  /* the driver took such a loss */

/* ---- the transport (environment) --------------------------------------- */
byte opening = 0;        /* the link being opened, 0: none */
byte up_link = 0;        /* the link that is up at the transport, 0: none */
byte live = 0;           /* links opening or open at the transport */
byte closing_link = 0;   /* a link whose close is under way */
byte last_up = 0;        /* the newest link that ever came up */
byte faults = FAULTS;
chan answers = [2] of { byte, bool };  /* (generation, succeeded) */

/* ---- the outbox --------------------------------------------------------- */
mtype:ms = { QUEUED, INFLIGHT, CONFIRMED, FAILED_M };
mtype:ms msg[NMSG];
byte msg_gen[NMSG];      /* the link a message was last written on */
byte msg_tag[NMSG];      /* its delivery tag there */
byte next_tag[MAXGEN];   /* delivery tags restart at 1 on every link */
byte wrote[MAXGEN * MAXTAG];  /* the broker's record: (link, tag) -> message + 1 */
byte acked[MAXGEN];      /* the broker confirmed tags 1..acked[g] of link g */
byte resolved = 0;       /* messages confirmed or failed */
bool ended = false;      /* the engine shut down or gave up */
byte stops;              /* 1: a shutdown or give-up will happen (chosen at init) */

/* the adapter's tag map: message i was written with (link g, tag t) */
#ifdef SHARED_TAGS
#define TAGGED(i, g, t) (msg[i] == INFLIGHT && msg_tag[i] == t)
#else
#define TAGGED(i, g, t) (msg[i] == INFLIGHT && msg_tag[i] == t && msg_gen[i] == g)
#endif

/* a message is queued and a link is up to write it on (NMSG = 2) */
#define WRITABLE (up_link != 0 && !ended && next_tag[up_link] < MAXTAG \
                  && (msg[0] == QUEUED || msg[1] == QUEUED))
/* link g has a delivery the broker has not confirmed */
#define PENDING(g) (acked[g] < next_tag[g])
/* a message in flight on a link that is no longer up (NMSG = 2) */
#define STRANDED ((msg[0] == INFLIGHT && msg_gen[0] != up_link) \
               || (msg[1] == INFLIGHT && msg_gen[1] != up_link))

/* properties read by LTL */
#define all_resolved (resolved == NMSG)
#define settled (state == CONNECTED || state == CLOSED)

/* ---- machine procedures (section 9), simplified ------------------------ */

/* RETIRE(n): the generation advances before close is emitted (11.3) */
inline retire() {
  out_close = gen;
  gen++;
}

/* OPEN: a fresh generation, never used (11.2); the model stops issuing
   generations at MAXGEN and gives up instead (the finite stand-in for
   max_attempts) */
inline open_link() {
  if
  :: gen < MAXGEN -> state = CONNECTING; out_open = gen
  :: else -> state = FAILED
  fi
}

/* SCHEDULE after a failed try: at once (the round's next endpoint, an
   immediate retry within the budget) or after a backoff wait; both are
   explored */
inline schedule() {
  if
  :: open_link()
  :: state = BACKING_OFF; lingering = false
  fi
}

inline attempt_failed() {
  retire(); schedule()
}

/* LINK_DOWN: a lost link lingers when a grace is set and the loss was
   reported (not a timeout) */
inline link_down(may_linger) {
  if
  :: may_linger && grace -> state = BACKING_OFF; lingering = true
  :: else -> retire(); schedule()
  fi
}

/* handle(now, input) (section 8): the stale rule first, then the cell */
inline handle(input, g) {
  out_close = 0; out_open = 0;
#ifdef NO_GEN_CHECK
  if :: true -> skip fi;
#else
  if
  :: (input == ADOPT || input == SUCCEEDED || input == ATT_FAILED
      || input == LOST || input == RESUMED) && g != gen -> goto stale
  :: else -> skip
  fi;
#endif
  if
  :: input == START && state == IDLE -> open_link()
  :: input == ADOPT && state == IDLE -> state = CONNECTED   /* attempt 0 */
  :: input == SUCCEEDED && state == CONNECTING -> state = CONNECTED
  :: (input == ATT_FAILED || input == LOST) && state == CONNECTING ->
       /* one loop per outage: only the current link's own loss acts */
       assert(input != LOST || reported_lost[gen]); attempt_failed()
  :: input == LOST && state == CONNECTED ->
       assert(reported_lost[gen]); link_down(true)
  :: input == RESUMED && state == BACKING_OFF && lingering ->
       assert(reported_resumed[gen]); state = CONNECTED; lingering = false
  :: input == RECONNECT && state == CONNECTED -> retire(); open_link()
  :: input == RECONNECT && state == BACKING_OFF ->
       if :: lingering -> retire(); lingering = false :: else -> skip fi; open_link()
  :: input == RECONNECT && state == FAILED -> open_link()
  :: input == SHUTDOWN && (state == CONNECTING || state == CONNECTED
       || (state == BACKING_OFF && lingering)) ->
       retire(); lingering = false; state = CLOSING; shut = true
  :: input == SHUTDOWN && (state == IDLE || state == FAILED
       || (state == BACKING_OFF && !lingering)) -> state = CLOSED; shut = true
  :: input == CLOSE_DONE && state == CLOSING -> state = CLOSED
  /* timers: connect timeout, liveness loss (never lingers), the end of a
     backoff wait or of a grace, the close timeout */
  :: input == TIMEOUT && state == CONNECTING -> attempt_failed()
  :: input == TIMEOUT && state == CONNECTED -> link_down(false)
  :: input == TIMEOUT && state == BACKING_OFF ->
       if :: lingering -> retire(); lingering = false :: else -> skip fi; open_link()
  :: input == TIMEOUT && state == CLOSING -> state = CLOSED
  :: else -> skip  /* ignored in this state */
  fi;
stale:
  skip
}

/* ---- the transport's side of close and open ---------------------------- */

inline do_close(n) {
  atomic {
    if :: opening == n -> opening = 0; live-- :: else -> skip fi;
    if :: up_link == n -> closing_link = n :: else -> skip fi
  };
  /* the close completes asynchronously; the driver awaits it */
  closing_link == 0
}

inline do_open(n) {
  atomic {
    assert(!shut);                /* after shutdown begins, no link opens */
    assert(live == 0);            /* one link at a time (single_link) */
    assert(opening == 0);         /* never an open while one is in flight */
    opening = n; live++
  }
}

/* Executes a step's outputs in order (15.1 rules 2 to 4), then publishes
   the snapshot so that the handle rejects stale reports at once. */
inline execute() {
#ifdef OPEN_BEFORE_CLOSE
  if :: out_open != 0 -> do_open(out_open) :: else -> skip fi;
  if :: out_close != 0 -> do_close(out_close) :: else -> skip fi;
#else
  if :: out_close != 0 -> do_close(out_close) :: else -> skip fi;
  if :: out_open != 0 -> do_open(out_open) :: else -> skip fi;
#endif
  d_step { out_close = 0; out_open = 0 }
}

/* One input: the machine's step and the snapshot's publication are one
   move of the driver (step.rs feed: handle, then publish), the close and
   the open it asked for are separate moves that reporters can interleave
   with. */
inline feed(input, g) {
  d_step {
    handle(input, g);
    /* a close names the link it retired: the one current before the step */
    assert(out_close == 0 || out_close == gen - 1);
    snap_gen = gen
  };
  execute();
  /* a shutdown's close is complete once nothing is open (step.rs settle) */
  if
  :: state == CLOSING && live == 0 -> d_step { handle(CLOSE_DONE, 0); snap_gen = gen }
  :: else -> skip
  fi
}

/* ---- processes ---------------------------------------------------------- */

/* The driver: takes reports then commands (shared.rs take_work), feeds
   them, and the transport's answers and the timers. */
proctype Driver() {
  byte g; bool ok; bool lost; bool resumed; bool rec; bool sd; byte bg;
  if
  :: feed(START, 0)
  :: /* the application opened link 1 itself and hands it over (12, Adoption) */
     atomic { up_link = 1; live = 1; last_up = 1 };
     feed(ADOPT, 1)
  fi;
end_driver:
  do
  :: state == CLOSED -> break
  :: atomic { (mbox_lost || mbox_resumed || cmd_reconnect || cmd_shutdown) ->
#ifdef COMMANDS_FIRST
       rec = cmd_reconnect; sd = cmd_shutdown; cmd_reconnect = false; cmd_shutdown = false
     };
     atomic {
       bg = mbox_gen; lost = mbox_lost; resumed = mbox_resumed;
       mbox_lost = false; mbox_resumed = false; took_after_sd = after_sd; after_sd = false
     };
#else
       bg = mbox_gen; lost = mbox_lost; resumed = mbox_resumed;
       mbox_lost = false; mbox_resumed = false; took_after_sd = after_sd; after_sd = false
     };
     atomic {
       rec = cmd_reconnect; sd = cmd_shutdown; cmd_reconnect = false; cmd_shutdown = false
     };
#endif
     /* a shutdown first, then a reconnect, then the batch (step.rs) */
     if :: sd -> feed(SHUTDOWN, 0) :: !sd && rec -> feed(RECONNECT, 0) :: else -> skip fi;
     /* the latest report about the link wins: lost-then-resumed is resumed */
     /* S41: a loss reported after a shutdown request is taken with the
        shutdown or after it, never before (reports are taken first) */
     assert(!took_after_sd || sd || shut);
     if :: resumed -> feed(RESUMED, bg) :: !resumed && lost -> feed(LOST, bg) :: else -> skip fi;
     d_step { bg = 0; lost = false; resumed = false; rec = false; sd = false; took_after_sd = false }
  :: answers ? g, ok ->
     /* an aborted open may still answer: the answer names its link */
     if :: ok -> feed(SUCCEEDED, g) :: else -> feed(ATT_FAILED, g) fi;
     d_step { g = 0; ok = false }
  /* timers that are due; a timer of a live link is a fault */
  :: state == CONNECTING && faults > 0 -> faults--; feed(TIMEOUT, 0)
  :: state == CONNECTED && faults > 0 -> faults--; feed(TIMEOUT, 0)
#ifndef NO_BACKOFF_TIMER
  :: state == BACKING_OFF -> feed(TIMEOUT, 0)
#endif
  :: state == CLOSING -> feed(TIMEOUT, 0)
  od
}

/* The transport: answers opens (a failure is a fault), brings links up. */
proctype Transport() {
  byte n;
end_transport:
  do
  :: atomic { closing_link != 0 -> up_link = 0; live--; closing_link = 0 }
  :: atomic { opening != 0 && up_link == 0 && nfull(answers) ->
       n = opening;
       if
       :: up_link = n; opening = 0; last_up = n; answers ! n, true
       :: faults > 0 -> faults--; opening = 0; live--; answers ! n, false
       fi
     }
  :: state == CLOSED -> break
  od
}

/* The handle's report path (shared.rs report): one load of the snapshot,
   then one compare-and-swap into the mailbox. `ghost_sd`: the reporting
   thread requested a shutdown before this report. */
inline report(g, lost, ghost_sd) {
  atomic {
    if :: lost -> reported_lost[g] = true :: else -> reported_resumed[g] = true fi;
    current = (g == snap_gen)
  };
  atomic {
#ifdef NO_GEN_CHECK
    current = true;
#endif
    if
    :: !current || g < mbox_gen -> skip   /* stale: dropped at the handle */
    :: else ->
       if :: g > mbox_gen -> mbox_gen = g; mbox_lost = false; mbox_resumed = false; after_sd = false :: else -> skip fi;
       if
       :: lost -> mbox_lost = true; mbox_resumed = false; after_sd = after_sd || ghost_sd
       :: else -> mbox_resumed = true; mbox_lost = false
       fi
    fi;
    g = 0; lost = false; current = false
  }
}

/* One SDK thread: reports the loss or the resume of any link that came up,
   the newest or a retired one (a late callback), through the handle. */
proctype Reporter() {
  byte g; bool lost; bool current;
end_reporter:
  last_up > 0 && state != CLOSED;
  atomic {
    /* any link that came up: the newest or an older, retired one */
    g = last_up;
    do :: g > 1 -> g-- :: break od;
    if :: lost = true :: lost = false fi;
    /* the loss of the link that is up is a fault: none left, no loss */
    if
    :: lost && g == up_link -> if :: faults > 0 -> faults-- :: else -> lost = false fi
    :: else -> skip
    fi
  };
  report(g, lost, false)
}

/* The user: a reconnect request, or a shutdown request followed, on the
   same thread, by a loss report (S41), or nothing. */
proctype User() {
  byte g; bool lost; bool current;
  if
  :: cmd_reconnect = true
  :: cmd_shutdown = true;
end_user:
     atomic { up_link != 0 -> g = up_link; lost = true };
     report(g, lost, true)
  :: skip
  fi
}

/* ---- the outbox, over any engine that keeps one link at a time ---------

   The outbox sees the engine only through the current link (the links
   watch) and its losses, so it is checked against an environment that
   makes links come and go in any order the engine may: one at a time,
   generations rising (which the engine's checks above prove). */

/* The links the engine hands to publishers, and its end. */
proctype Links() {
end_links:
  do
  :: atomic { up_link == 0 && gen < MAXGEN && !ended ->
       up_link = gen; last_up = gen }
  :: atomic { up_link != 0 && faults > 0 ->
       faults--;
       /* what the broker had not confirmed may be lost with the link, or
          its confirms may still arrive, late */
       if :: acked[up_link] = next_tag[up_link] :: skip fi;
       up_link = 0; gen++ }                           /* lost: retired */
  :: atomic { !ended && stops > 0 -> stops--; up_link = 0; ended = true }   /* shutdown or give-up */
  :: ended -> break
  od
}

/* The outbox's writer: takes the first queued message and writes it on
   the link that is up, with the link's next delivery tag (flush.rs); on a
   loss it puts back what was in flight on the old link (replay). */
proctype Writer() {
  byte i;
end_writer:
  do
  :: atomic { WRITABLE ->
       i = 0;
       do
       :: msg[i] == QUEUED -> break
       :: else -> i++
       od;
       next_tag[up_link]++;
       msg[i] = INFLIGHT; msg_gen[i] = up_link; msg_tag[i] = next_tag[up_link];
       wrote[up_link * MAXTAG + next_tag[up_link] - 1] = i + 1;
       i = 0 }
#ifndef NO_REPLAY
  :: atomic { STRANDED && !ended ->
       i = 0;
       do
       :: i < NMSG && msg[i] == INFLIGHT && msg_gen[i] != up_link ->
          msg[i] = QUEUED; msg_gen[i] = 0; msg_tag[i] = 0
       :: i < NMSG && !(msg[i] == INFLIGHT && msg_gen[i] != up_link) -> i++
       :: i == NMSG -> break
       od;
       i = 0 }
#endif
  :: atomic { ended && resolved < NMSG ->
       /* shutdown or give-up: everything unresolved fails, once */
       i = 0;
       do
       :: i < NMSG && (msg[i] == QUEUED || msg[i] == INFLIGHT) ->
          assert(msg[i] != CONFIRMED && msg[i] != FAILED_M);
          msg[i] = FAILED_M; resolved++
       :: i < NMSG && !(msg[i] == QUEUED || msg[i] == INFLIGHT) -> i++
       :: i == NMSG -> break
       od;
       i = 0 }
  :: all_resolved -> break
  od
}

/* The broker confirms each link's deliveries in tag order, maybe after the
   link was lost; the adapter maps (link, tag) to the message (its tag map
   is per link; shared in the SHARED_TAGS mutant). */
proctype Broker() {
  byte g; byte t; byte m; byte i;
end_broker:
  do
  :: atomic { PENDING(last_up) || (last_up > 1 && PENDING(last_up - 1)) ->
       if
       :: PENDING(last_up) -> g = last_up
       :: last_up > 1 && PENDING(last_up - 1) -> g = last_up - 1
       fi;
       acked[g]++; t = acked[g];
       m = wrote[g * MAXTAG + t - 1];
       i = 0;
       do
       :: i < NMSG && TAGGED(i, g, t) -> break
       :: i < NMSG && !TAGGED(i, g, t) -> i++
       :: i == NMSG -> break
       od;
       if
       :: i < NMSG ->
          /* a confirm is attributed only to what was written there */
          assert(m == i + 1);
          assert(msg[i] != CONFIRMED && msg[i] != FAILED_M);
          msg[i] = CONFIRMED; resolved++
       :: else -> skip   /* replayed or resolved already: a duplicate */
       fi;
       g = 0; t = 0; m = 0; i = 0 }
  :: all_resolved -> break
  od
}

/* A deadline (expiry, publish timeout) fails one message; the other has
   none, so only replay and confirms can resolve it. */
proctype Deadline() {
  byte i;
end_deadline:
  atomic {
    (msg[0] == QUEUED || msg[0] == INFLIGHT || msg[1] == QUEUED || msg[1] == INFLIGHT) ->
    if
    :: msg[0] == QUEUED || msg[0] == INFLIGHT -> i = 0
    :: msg[1] == QUEUED || msg[1] == INFLIGHT -> i = 1
    fi;
    assert(msg[i] != CONFIRMED && msg[i] != FAILED_M);
    msg[i] = FAILED_M; resolved++; i = 0
  }
}

/* Time passing while nothing else can move (`timeout` is SPIN's "no other
   statement is executable"): with weak fairness a run that deadlocks is
   then an infinite run idling in its last state, so a system stuck short
   of its goal violates the liveness properties (liveness checks only,
   -DWITH_IDLE). */
#ifdef WITH_IDLE
proctype Idle() {
end_idle:
  do :: timeout -> skip od
}
#endif

init {
  atomic {
#ifdef WITH_IDLE
    run Idle();
#endif
#ifdef OUTBOX
    msg[0] = QUEUED; msg[1] = QUEUED;
    if :: stops = 0 :: stops = 1 fi;
    run Links();
    run Writer();
    run Broker();
    run Deadline()
#else
    if :: grace = true :: grace = false fi;
    run Driver();
    run Transport();
    run Reporter();
    run User()
#endif
  }
}

/* Every message is eventually confirmed or failed (outbox; weak fairness). */
ltl delivered { <> all_resolved }
/* With the broker back (faults spent), the engine ends connected, or shut
   down at the user's request, or given up by the model's generation bound
   (engine; weak fairness). */
ltl recovers { <> [] (settled || state == FAILED) }
