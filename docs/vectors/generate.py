#!/usr/bin/env python3
"""Writes the conformance vectors under docs/vectors/*.json.

    python3 docs/vectors/generate.py          # rewrite every vector
    python3 docs/vectors/generate.py --check  # fail if a committed vector differs

Each vector below is a script of (time, input) steps; the expected outputs,
state, effect and timeout of every step are computed by `model.py`, the
Python port of docs/spec.md. The committed JSON is the contract: the Rust
runner (`cargo test --all-features --test engine vectors::conformance_vectors`) replays it against the
real machine. This script is a convenience for writing vectors, not part of
the contract; a vector may just as well be written by hand.
"""

import json
import pathlib
import sys

sys.dont_write_bytecode = True
from model import ConfigError, Machine  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
VECTORS = []


# ---- inputs ------------------------------------------------------------------

def start():
    return {"type": "start"}


def adopt(g):
    return {"type": "adopt", "generation": g}


def ok(g):
    return {"type": "attempt_succeeded", "generation": g}


def with_detail(inp, detail):
    """JSON omits an absent detail (section 3); a detail is a u32."""
    if detail is not None:
        assert 0 <= detail < 1 << 32, detail
        inp["detail"] = detail
    return inp


def fail(g, kind="transient", detail=None):
    return with_detail({"type": "attempt_failed", "generation": g, "kind": kind}, detail)


def lost(g, kind="transient", detail=None):
    return with_detail({"type": "link_lost", "generation": g, "kind": kind}, detail)


def resumed(g, session_present=True):
    inp = {"type": "link_resumed", "generation": g}
    if not session_present:  # JSON omits the default, true (section 4)
        inp["session_present"] = False
    return inp


def activity(g):
    return {"type": "activity", "generation": g}


def blocked(g):
    return {"type": "blocked", "generation": g}


def unblocked(g):
    return {"type": "unblocked", "generation": g}


def reconnect():
    return {"type": "reconnect_now"}


def shutdown():
    return {"type": "shutdown"}


def close_completed():
    return {"type": "close_completed"}


def probed(p, outcome):
    return {"type": "probed", "probe": p, "outcome": outcome}


def timeout():
    return {"type": "timeout"}


def all_generation_inputs(g, with_adopt=True):
    """Every input that names a generation, naming `g`."""
    head = [adopt(g)] if with_adopt else []
    return head + [ok(g), fail(g), lost(g), resumed(g), activity(g), blocked(g), unblocked(g)]


# ---- vectors -----------------------------------------------------------------

class Vector:
    def __init__(self, name, description, config, scenario=None, rows=None):
        self.name = name
        self.scenario = scenario
        self.rows = rows
        self.description = description
        self.config = config
        self.m = Machine(config)
        self.steps = []
        VECTORS.append(self)

    @property
    def gen(self):
        return self.m.gen

    def due(self):
        return self.m.poll_timeout()

    def step(self, at, inp, note=None, drain=True):
        """handle(at, inp) (none when `inp` is None), then, unless `drain` is
        False, poll(at) until None (section 17.2)."""
        assert inp is not None or drain, f"{self.name}: a step with no input must drain"
        m = self.m
        before = dict(m.stats)
        if inp is not None:
            m.handle(at, inp)
        if drain:
            outputs = m.drain(at)
        else:
            # The format's rule for a step without drain: its input queues nothing.
            assert not m.out, f"{self.name}: the undrained step at {at} queued {m.out}"
            outputs = []
        t = m.poll_timeout()
        # Design rule of every committed vector: no timer is left due after a
        # drained step, so a port's poll never has to fire one implicitly
        # (except in a step with no input, written to test exactly that).
        if drain:
            assert t is None or t > at, f"{self.name}: timer due at {t} left after step at {at}"
        if m.stats["stale_inputs"] > before["stale_inputs"]:
            effect = "stale"
        elif m.stats["ignored_inputs"] > before["ignored_inputs"]:
            effect = "ignored"
        else:
            effect = "handled"
        step = {"at_ms": at, "input": inp}
        if not drain:
            step["drain"] = False
        if note:
            step["note"] = note
        if inp is not None:  # no input: the counters say nothing worth stating
            step["effect"] = effect
        step["outputs"] = outputs
        step["state"] = {"kind": m.kind(), "generation": m.gen, "attempt": m.state_attempt()}
        if m.c["endpoints"] > 1:
            step["state"]["endpoint"] = m.endpoint()
        step["timeout_ms"] = t
        self.steps.append(step)
        return outputs

    def fire(self, note=None):
        """A timeout exactly when the machine asked for one."""
        return self.step(self.due(), timeout(), note)

    def to_json(self):
        head = {"name": self.name}
        if self.scenario:
            head["scenario"] = self.scenario
        if self.rows:
            head["rows"] = self.rows
        head["description"] = self.description
        head["config"] = self.config
        lines = ["{"]
        for k, v in head.items():
            lines.append(f"  {json.dumps(k)}: {dumps(v)},")
        lines.append('  "steps": [')
        for i, s in enumerate(self.steps):
            lines.append("    {")
            items = list(s.items())
            for j, (k, v) in enumerate(items):
                comma = "," if j + 1 < len(items) else ""
                if k == "outputs" and v:
                    lines.append('      "outputs": [')
                    for n, o in enumerate(v):
                        c = "," if n + 1 < len(v) else ""
                        lines.append(f"        {dumps(o)}{c}")
                    lines.append(f"      ]{comma}")
                else:
                    lines.append(f"      {json.dumps(k)}: {dumps(v)}{comma}")
            lines.append("    }" + ("," if i + 1 < len(self.steps) else ""))
        lines.append("  ]")
        lines.append("}")
        return "\n".join(lines) + "\n"


class ConfigErrorVector:
    def __init__(self, name, description, config, error, scenario="S23"):
        try:
            Machine(config)
        except ConfigError as e:
            assert e.kind == error, f"{name}: model says {e.kind}, vector says {error}"
        else:
            raise AssertionError(f"{name}: the model accepts the config")
        self.name = name
        self.scenario = scenario
        self.description = description
        self.config = config
        self.error = error
        VECTORS.append(self)

    def to_json(self):
        lines = ["{"]
        lines.append(f'  "name": {dumps(self.name)},')
        lines.append(f'  "scenario": {dumps(self.scenario)},')
        lines.append(f'  "description": {dumps(self.description)},')
        lines.append(f'  "config": {dumps(self.config)},')
        lines.append(f'  "config_error": {dumps(self.error)},')
        lines.append('  "steps": []')
        lines.append("}")
        return "\n".join(lines) + "\n"


def dumps(v):
    return json.dumps(v, separators=(", ", ": "), ensure_ascii=False)


# A configuration with round numbers, used by the transition-table rows.
PLAIN = {
    "seed": 1,
    "backoff": {"initial_ms": 1000, "multiplier": 2.0, "max_ms": 16000, "jitter": {"mode": "none"}},
    "stable_period_ms": 1000,
    "connect_timeout_ms": 5000,
    "liveness_timeout_ms": 4000,
    "close_timeout_ms": 3000,
}


def plain(**extra):
    c = json.loads(json.dumps(PLAIN))
    c.update(extra)
    return c


# ---- transition-table rows ------------------------------------------------------

def row_idle():
    v = Vector(
        "row-idle",
        "Row idle, every column but shutdown (see row-idle-shutdown) and the current "
        "generation's adopt (see adopt-first-link): inputs naming the "
        "current generation 1 (not yet opened) are ignored, other generations are stale, "
        "start opens generation 1 as attempt 1.",
        plain(),
        rows=["idle"],
    )
    for i in all_generation_inputs(1, with_adopt=False):
        v.step(0, i)
    for i in all_generation_inputs(2):
        v.step(0, i, "stale: a generation that was never opened")
    v.step(0, lost(0), "stale: generation 0 never exists")
    v.step(0, reconnect(), "ignored: reconnect_now does not start an idle machine")
    v.step(0, close_completed())
    v.step(0, timeout(), "ignored: idle has no timer")
    v.step(5, start())
    v.step(6, start(), "ignored: already started")


def row_idle_shutdown():
    v = Vector(
        "row-idle-shutdown",
        "Row idle, column shutdown: no link exists, so the machine goes straight to closed "
        "without a close output.",
        plain(),
        rows=["idle", "closed"],
    )
    v.step(0, timeout(), "ignored: idle has no timer")
    v.step(10, shutdown())
    v.step(20, start(), "ignored: closed is terminal")


def row_connecting():
    v = Vector(
        "row-connecting",
        "Row connecting, every column: the ignored and stale cells, then success, "
        "transient failure, loss during the open, connect timeout, a permanent failure, "
        "and shutdown aborting an open.",
        plain(),
        rows=["connecting"],
    )
    v.step(0, start())
    v.step(10, start(), "ignored")
    for i in [adopt(1), resumed(1), activity(1), blocked(1), unblocked(1)]:
        v.step(10, i)
    v.step(10, reconnect(), "ignored: an attempt is already in progress")
    v.step(10, close_completed())
    v.step(4999, timeout(), "ignored: spurious, the deadline is 5000")
    for i in all_generation_inputs(2):
        v.step(4999, i, "stale: generation 2 was never opened")
    v.step(4999, ok(1))
    v.step(6000, reconnect(), "retire generation 1, open 2 as attempt 1 of a new outage")
    v.step(6001, fail(1), "stale: generation 1 is retired")
    v.step(6010, fail(2))
    v.fire("the backoff wait (step 1: 1000 ms) elapsed")
    v.step(7020, lost(3), "a link lost while still opening counts as a failed attempt")
    v.fire()
    v.fire("connect timeout: the open of generation 4 took 5000 ms")
    v.fire()
    v.step(20000, fail(5, "permanent"), "permanent: no permanent retries configured")
    v.step(21000, reconnect(), "leaves failed: a new outage, attempt 1")
    v.step(21001, shutdown(), "close the link being opened, abort its open")
    v.step(21002, ok(6), "stale: the open completed after the shutdown retired it")


def row_connected():
    v = Vector(
        "row-connected",
        "Row connected, every column: ignored and stale cells, activity and liveness "
        "checks, blocked, loss of a stable link (immediate retry), reconnect_now, "
        "liveness loss, shutdown.",
        plain(),
        rows=["connected"],
    )
    v.step(0, start())
    v.step(10, ok(1), "liveness checks every 2000 ms from here")
    v.step(20, start(), "ignored")
    for i in [adopt(1), ok(1), fail(1), resumed(1), unblocked(1)]:
        v.step(20, i)
    v.step(20, close_completed())
    v.step(30, timeout(), "ignored: spurious, next check at 2010")
    for i in all_generation_inputs(2) + [lost(0)]:
        v.step(30, i, "stale")
    v.step(500, activity(1), "handled: marks the link as heard from")
    v.fire("check 1 saw activity: nothing happens")
    v.step(2500, blocked(1))
    v.step(2600, unblocked(1))
    v.step(3000, activity(1))
    v.fire("check 2 saw activity")
    v.step(4500, lost(1), "up 4490 ms >= stable period 1000: new outage, immediate retry")
    v.step(4510, ok(2))
    v.step(5000, activity(2))
    v.step(5600, reconnect(), "the user retires the live link")
    v.step(5601, lost(2), "stale: the late loss report of the link we retired")
    v.step(5610, ok(3))
    v.fire("check 1: no activity (missed 1)")
    v.fire("check 2: no activity (missed 2): dead, 4000 ms after the link came up")
    v.step(13620, ok(4))
    v.step(14000, shutdown())


def row_blocked():
    v = Vector(
        "row-blocked",
        "Row blocked, every column: ignored and stale cells, activity, liveness checks, "
        "unblocked, loss, reconnect_now, liveness loss while blocked, blocked too long, "
        "shutdown.",
        plain(blocked_timeout_ms=8000),
        rows=["blocked"],
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(100, blocked(1), "blocked deadline 8100")
    v.step(110, start(), "ignored")
    for i in [adopt(1), ok(1), fail(1), resumed(1), blocked(1)]:
        v.step(110, i, "ignored (blocked(1): a duplicate does not move the deadline)")
    v.step(110, close_completed())
    v.step(120, timeout(), "ignored: spurious, the next check is at 2000")
    for i in all_generation_inputs(2):
        v.step(120, i, "stale")
    v.step(1000, activity(1))
    v.fire("check saw activity")
    v.step(2500, unblocked(1))
    v.step(2600, blocked(1), "a fresh deadline: 10600")
    v.step(3000, lost(1), "stable: immediate retry")
    v.step(3000, ok(2))
    v.step(3100, blocked(2))
    v.step(3200, reconnect())
    v.step(3300, ok(3))
    v.step(3400, blocked(3))
    v.fire("check 1 at 5300: missed 1")
    v.fire("check 2 at 7300: missed 2, dead while blocked")
    v.step(7400, ok(4))
    v.step(7500, blocked(4), "blocked deadline 15500")
    for t in (9000, 11000, 13000, 15000):
        v.step(t, activity(4))
        v.fire()
    v.fire("still blocked at the deadline, though alive: replaced")
    v.step(15600, ok(5))
    v.step(15700, blocked(5))
    v.step(15800, shutdown())


def row_backing_off():
    v = Vector(
        "row-backing-off",
        "Row backing_off without a lingering link, every column: the current generation "
        "is the next, not yet opened one, so reports naming it are ignored and reports "
        "naming the retired one are stale; timeout opens, reconnect_now skips the wait "
        "without resetting the attempt counter, shutdown goes straight to closed.",
        plain(),
        rows=["backing_off"],
    )
    v.step(0, start())
    v.step(10, fail(1))
    v.step(20, start(), "ignored")
    for i in all_generation_inputs(2):
        v.step(20, i, "ignored: generation 2 is current but not opened yet")
    for i in all_generation_inputs(1):
        v.step(20, i, "stale: generation 1 is retired")
    v.step(20, close_completed())
    v.step(1009, timeout(), "ignored: spurious, the wait ends at 1010")
    v.fire()
    v.step(1020, fail(2))
    v.step(1500, reconnect(), "skips the 2000 ms wait; still attempt 3")
    v.step(1510, fail(3))
    v.step(1600, shutdown(), "no link to close")
    v.step(6000, timeout(), "ignored: closed has no timer")


def row_backing_off_lingering():
    v = Vector(
        "row-backing-off-lingering",
        "Row backing_off with a lingering link (resume_grace_ms set), every column: the "
        "lost link keeps its generation during the grace, link_resumed brings it back "
        "without an open, duplicates of its loss are ignored, the timer closes it before "
        "the next open, reconnect_now closes it before opening, shutdown closes it.",
        plain(resume_grace_ms=3000),
        rows=["backing_off"],
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(1500, lost(1), "stable: new outage; the first retry waits for the grace (3000 ms)")
    v.step(1510, start(), "ignored")
    for i in [adopt(1), ok(1), fail(1), lost(1), activity(1), blocked(1), unblocked(1)]:
        v.step(1510, i, "ignored: the lingering link is current, but these do not apply")
    for i in all_generation_inputs(2):
        v.step(1510, i, "stale")
    v.step(1510, close_completed())
    v.step(2000, timeout(), "ignored: spurious, the grace ends at 4500")
    v.step(2100, resumed(1), "the transport restored the link by itself")
    v.step(2300, lost(1), "up 200 ms: not stable; the attempt counter is still 0")
    v.fire("grace over: close the lingering link, then open")
    v.step(7700, ok(2))
    v.step(9000, lost(2), "stable: lingers again")
    v.step(9100, reconnect(), "close the lingering link, open at once")
    v.step(9200, ok(3))
    v.step(10500, lost(3))
    v.step(10600, shutdown(), "the lingering link is closed")
    v.step(10700, close_completed())


def row_closing():
    v = Vector(
        "row-closing",
        "Row closing, every column: everything but close_completed and a due timeout is "
        "ignored; reports about the link being closed are stale.",
        plain(),
        rows=["closing"],
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(100, shutdown())
    for i in all_generation_inputs(1):
        v.step(110, i, "stale: our own close makes the transport report generation 1")
    for i in all_generation_inputs(2):
        v.step(110, i, "ignored: generation 2 will never be opened")
    v.step(120, start(), "ignored")
    v.step(120, reconnect(), "ignored: shutting down")
    v.step(120, shutdown(), "ignored: already shutting down, no second close")
    v.step(3099, timeout(), "ignored: spurious, the close deadline is 3100")
    v.step(3099, close_completed(), "the driver finished closing")


def row_closing_timeout():
    v = Vector(
        "row-closing-timeout",
        "Row closing, column timeout: the driver never reports close_completed; the "
        "close timeout ends the wait.",
        plain(),
        rows=["closing"],
    )
    v.step(0, start())
    v.step(50, shutdown(), "aborts the open in progress")
    v.fire("close_timeout_ms 3000 elapsed")
    v.step(3100, close_completed(), "ignored: too late, already closed")


def row_closed():
    v = Vector(
        "row-closed",
        "Row closed, every column: closed is terminal, every input is ignored or stale "
        "and nothing is emitted.",
        plain(),
        rows=["closed"],
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(10, shutdown())
    v.step(20, close_completed())
    for inp in (
        [start(), reconnect(), shutdown(), close_completed(), timeout()]
        + all_generation_inputs(2)
        + all_generation_inputs(1)
    ):
        v.step(100000, inp)


def row_failed():
    v = Vector(
        "row-failed",
        "Row failed, every column: failed is sticky; only reconnect_now (a new outage, "
        "attempt 1) and shutdown (straight to closed) leave it.",
        plain(),
        rows=["failed"],
    )
    v.step(0, start())
    v.step(10, fail(1, "permanent"))
    for inp in [start(), close_completed(), timeout()] + all_generation_inputs(2):
        v.step(20, inp, "ignored")
    for i in all_generation_inputs(1):
        v.step(20, i, "stale")
    v.step(100000, timeout(), "ignored: failed has no timer")
    v.step(100010, reconnect())
    v.step(100020, fail(2, "permanent"))
    v.step(100030, shutdown())


# ---- scenarios -------------------------------------------------------------------

DEFAULT = {"seed": 42}


def s01():
    v = Vector(
        "s01-interrupt-while-connected",
        "S01: an interrupt that arrives while the link is healthy is a no-op. The report "
        "names generation 1, lost and replaced earlier; the machine is connected on "
        "generation 2, so the report is stale: no output, no timer change.",
        dict(DEFAULT),
        scenario="S01",
    )
    v.step(0, start())
    v.step(100, ok(1))
    v.step(20000, lost(1))
    v.step(20100, ok(2))
    v.step(20200, lost(1), "stale interrupt while connected: nothing happens")
    v.step(20200, lost(1, "permanent"), "even a permanent one")


def s02():
    v = Vector(
        "s02-interrupt-while-disconnected",
        "S02: a genuine interrupt schedules exactly one attempt: the link is closed, one "
        "open follows (immediately: the link had been stable), state connecting, attempt 1.",
        dict(DEFAULT),
        scenario="S02",
    )
    v.step(0, start())
    v.step(50, ok(1))
    v.step(30000, activity(1))
    v.fire("liveness check at 30050")
    v.step(40000, lost(1))


def s03():
    v = Vector(
        "s03-stale-report-checked-at-handling-time",
        "S03: a report queued before an active reconnect is judged when the machine "
        "handles it, not when it was queued: link_lost(1) and attempt_failed(1) arrive "
        "after generation 2 is up, so they are stale.",
        dict(DEFAULT),
        scenario="S03",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(5000, reconnect())
    v.step(5100, ok(2))
    v.step(5200, lost(1), "queued on the callback thread before the reconnect")
    v.step(5200, fail(1))


def s04():
    v = Vector(
        "s04-one-loop-when-disconnected",
        "S04: after a loss, exactly one wait is scheduled and the machine is reconnecting "
        "(backing_off); with immediate_first_retry off the first attempt runs after the "
        "step-1 delay (1000 ms +-50 %: 884 ms from seed 4).",
        {"seed": 4, "immediate_first_retry": False},
        scenario="S04",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(15000, lost(1))
    v.fire("the first attempt at its scheduled time")


def s05():
    v = Vector(
        "s05-stale-interrupt-after-resume",
        "S05, the core storm race: the SDK reports the link interrupted, then resumed by "
        "itself. With a resume grace the machine lets the lost link linger instead of "
        "replacing it; link_resumed brings it back. Nothing is opened or closed, the "
        "generation stays 1, the attempt counter stays 0, and the old wake-up is a no-op.",
        {"seed": 5, "resume_grace_ms": 5000},
        scenario="S05",
    )
    v.step(0, start())
    v.step(100, ok(1))
    v.step(15000, lost(1), "Interrupted(1): the start-step X would be queued here")
    v.step(15001, resumed(1), "Resumed(1) before the grace ends")
    v.step(20000, timeout(), "ignored: the wake-up of the cancelled wait")
    v.step(20000, activity(1), "the link is healthy")


def s06():
    v = Vector(
        "s06-three-rapid-interrupts",
        "S06: three interrupts for the same link in the same millisecond produce exactly "
        "one open; the attempt trace then rises 1, 2, 3 by one per failed attempt.",
        dict(DEFAULT),
        scenario="S06",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(12000, lost(1))
    v.step(12000, lost(1), "stale: generation 1 was retired by the first report")
    v.step(12000, lost(1), "stale")
    v.step(12020, fail(2))
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 20, fail(3))
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 20, ok(4))


def s07():
    v = Vector(
        "s07-fresh-machine-not-reconnecting",
        "S07: a fresh machine is idle (not reconnecting: neither connecting nor "
        "backing_off), generation 1, no timer; the first genuine interrupt is acted on.",
        dict(DEFAULT),
        scenario="S07",
    )
    v.step(0, timeout(), "ignored: nothing to do")
    v.step(0, start())
    v.step(10, ok(1))
    v.step(500, lost(1), "the first genuine interrupt is forwarded (an unstable link)")


def s08():
    v = Vector(
        "s08-own-teardown-interrupt-ignored",
        "S08: the interrupt caused by our own close of generation 1 names a retired "
        "generation and is inert, during the reconnect, after the new attempt failed "
        "(the seeds' flag is clear and the connected-check says disconnected here), and "
        "after generation 3 is up.",
        dict(DEFAULT),
        scenario="S08",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(15000, reconnect(), "active reconnect: close 1 before opening 2")
    v.step(15001, lost(1), "UNEXPECTED_HANGUP from closing generation 1: stale")
    v.step(15100, fail(2))
    v.step(15101, lost(1), "stale: the case the flag-plus-check fix lets through")
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 50, ok(3))
    v.step(v.steps[-1]["at_ms"] + 1, lost(1), "stale")
    v.step(v.steps[-1]["at_ms"] + 1, lost(2), "stale")


def s09():
    v = Vector(
        "s09-genuine-interrupt-forwarded",
        "S09: a genuine interrupt of the current link is acted on exactly once: close it, "
        "leave connected with reason link_lost, open the next link.",
        dict(DEFAULT),
        scenario="S09",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(25000, lost(1))


def s10():
    v = Vector(
        "s10-active-reconnect-success",
        "S10: while disconnected (backing off, old link already closed once), "
        "reconnect_now opens at once; reconnecting (connecting) only while the attempt "
        "runs, connected afterwards. One close of each old link, one open.",
        dict(DEFAULT),
        scenario="S10",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(20000, lost(1))
    v.step(20010, fail(2))
    v.step(20100, reconnect(), "skip the wait")
    v.step(20200, ok(3))


def s11():
    v = Vector(
        "s11-active-reconnect-failure",
        "S11: a failed active reconnect counts as a failed attempt and schedules the next "
        "one by backoff; nothing stays suppressed: the next link's loss is acted on.",
        dict(DEFAULT),
        scenario="S11",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(20000, lost(1))
    v.step(20010, fail(2))
    v.step(20100, reconnect())
    v.step(20150, fail(3), "the error is counted; the next attempt waits per the policy")
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 30, ok(4))
    v.step(v.steps[-1]["at_ms"] + 500, lost(4), "not suppressed")


def s12():
    v = Vector(
        "s12-reentrant-reconnect-noop",
        "S12: reconnect_now while an attempt is already in flight is a no-op: no close, "
        "no open, state and attempt unchanged.",
        dict(DEFAULT),
        scenario="S12",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(5000, reconnect())
    v.step(5001, reconnect(), "re-entrant: ignored")
    v.step(5002, reconnect(), "ignored")
    v.step(5100, ok(2))


def s13():
    v = Vector(
        "s13-deep-reconnect-close-before-open",
        "S13: a deep reconnect while the lost link lingers (resume grace): the old link "
        "is closed, then the new one opened, in one drain (the driver refreshes "
        "credentials between the two); connected afterwards.",
        {"seed": 13, "resume_grace_ms": 2000},
        scenario="S13",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(20000, lost(1))
    v.step(20100, reconnect(), "close(1) -> refresh -> open(2)")
    v.step(20300, ok(2))


def s14():
    v = Vector(
        "s14-deep-reconnect-failure",
        "S14: as S13, but the new link fails to open: the failure is counted, the next "
        "attempt is scheduled, and a later genuine interrupt starts a new reconnect.",
        {"seed": 14, "resume_grace_ms": 2000},
        scenario="S14",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(20000, lost(1))
    v.step(20100, reconnect())
    v.step(20300, fail(2))
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 100, ok(3))
    v.step(v.steps[-1]["at_ms"] + 15000, lost(3), "a later genuine interrupt")
    v.fire("grace over: close 3, open 4")


def s16():
    v = Vector(
        "s16-cancel-then-genuine-drop",
        "S16: (a) a resume when nothing is pending is ignored; (c) loss -> resume -> a "
        "genuine loss again starts a second wait, and the grace expiry closes the link "
        "before the one open; (b) a resume after the wait already ended is ignored "
        "(current generation) or stale (the closed one).",
        {"seed": 16, "resume_grace_ms": 1000},
        scenario="S16",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(100, resumed(1), "(a) nothing to cancel: ignored")
    v.step(20000, lost(1))
    v.step(20200, resumed(1))
    v.step(25000, lost(1), "the genuine drop: up 4800 ms < stable period 10000")
    v.fire("the second wait ends: close 1, open 2")
    v.step(v.steps[-1]["at_ms"] + 10, resumed(1), "(b) stale")
    v.step(v.steps[-1]["at_ms"], resumed(2), "(b) ignored: generation 2 is opening, not lost")
    v.step(v.steps[-1]["at_ms"] + 10, ok(2))


def s17():
    v = Vector(
        "s17-close-old-before-open-new",
        "S17: the lingering lost link is closed unconditionally before the next link is "
        "opened, in the same drain, even though it is already down.",
        {"seed": 17, "resume_grace_ms": 3000},
        scenario="S17",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(30000, activity(1))
    v.fire()
    v.step(35000, lost(1))
    v.fire("close(1) before open(2)")


def s19():
    v = Vector(
        "s19-shutdown-while-backing-off",
        "S19: shutdown during the wait before attempt 3 goes straight to closed: no "
        "gave_up (cancelled is not failed), no timer, no open ever again; generation 2 "
        "was closed when its attempt failed.",
        dict(DEFAULT),
        scenario="S19",
    )
    v.step(0, start())
    v.step(10, fail(1))
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 10, fail(2))
    v.step(v.steps[-1]["at_ms"] + 100, shutdown())
    v.step(600000, timeout(), "ignored: 10 x dmax later, nothing")


def s19_lingering():
    v = Vector(
        "s19-shutdown-while-lingering",
        "S19 with a resume grace: the down link still lingers during the wait, so "
        "shutdown closes it and waits for the driver (closing), then closed.",
        {"seed": 19, "resume_grace_ms": 5000},
        scenario="S19",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(15000, lost(1))
    v.step(16000, shutdown())
    v.step(16100, close_completed())


def s20():
    v = Vector(
        "s20-transient-error-keeps-retrying",
        "S20: a transient failure of attempt 2 (for example a token service 5xx) counts "
        "as failed; attempt 3 runs at its scheduled time and succeeds.",
        dict(DEFAULT),
        scenario="S20",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(20000, lost(1))
    v.step(20050, fail(2, "transient"))
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 40, ok(3))


def s23():
    v = Vector(
        "s23-backoff-schedule-default",
        "S23: the default policy (1 s, x2, cap 60 s, +-50 % proportional jitter) over a "
        "long outage: every attempt fails at once; delays grow, are jittered, and never "
        "exceed 60 s; attempt numbers rise by exactly 1.",
        {"seed": 23},
        scenario="S23",
    )
    v.step(0, start())
    for _ in range(11):
        v.step(v.steps[-1]["at_ms"], fail(v.gen))
        v.fire()


def backoff_vector(name, desc, backoff, seed, attempts, **extra):
    cfg = {"seed": seed, "backoff": backoff}
    cfg.update(extra)
    v = Vector(name, desc, cfg, scenario="S23")
    v.step(0, start())
    for _ in range(attempts):
        v.step(v.steps[-1]["at_ms"], fail(v.gen))
        v.fire()
    return v


def s23_modes():
    backoff_vector(
        "s23-backoff-none",
        "No jitter, multiplier 1.5: base(n+1) = min(cap, floor(base(n) * 1.5)): 1000, 1500, "
        "2250, 3375, 5062, 7593, 11389, 17083, 20000 (cap); no PRNG draw.",
        {"initial_ms": 1000, "multiplier": 1.5, "max_ms": 20000, "jitter": {"mode": "none"}},
        1,
        10,
    )
    backoff_vector(
        "s23-backoff-full",
        "Full jitter (AWS preset numbers): delay = U[0, base]; one draw per delay.",
        {"initial_ms": 1000, "multiplier": 2.0, "max_ms": 120000, "jitter": {"mode": "full"}},
        7,
        10,
    )
    backoff_vector(
        "s23-backoff-equal",
        "Equal jitter: delay = floor(base/2) + U[0, base - floor(base/2)]; one draw.",
        {"initial_ms": 999, "multiplier": 2.0, "max_ms": 30000, "jitter": {"mode": "equal"}},
        8,
        8,
    )
    backoff_vector(
        "s23-backoff-decorrelated",
        "Decorrelated jitter: delay = min(cap, U[initial, 3 * previous]), previous starts "
        "at initial; one draw; the multiplier is not used.",
        {"initial_ms": 500, "multiplier": 2.0, "max_ms": 10000, "jitter": {"mode": "decorrelated"}},
        9,
        10,
    )
    backoff_vector(
        "s23-backoff-grpc",
        "gRPC connection backoff: 1 s, x1.6, +-20 %, cap 120 s; the cap applies after "
        "jitter too.",
        {"initial_ms": 1000, "multiplier": 1.6, "max_ms": 120000,
         "jitter": {"mode": "proportional", "fraction": 0.2}},
        10,
        14,
        connect_timeout_ms=20000,
    )
    backoff_vector(
        "s23-backoff-proportional-no-draw",
        "Proportional jitter whose spread floor(base * fraction) is 0 makes no PRNG draw: "
        "with initial 3, x1.5 and fraction 0.1, the delays for bases 3, 4, 6 and 9 are "
        "exact and the PRNG is first used when the spread reaches 1 (base 13).",
        {"initial_ms": 3, "multiplier": 1.5, "max_ms": 100,
         "jitter": {"mode": "proportional", "fraction": 0.1}},
        11,
        9,
    )


def s23_outages():
    v = Vector(
        "s23-backoff-reset-per-outage",
        "The backoff restarts at step 1 in each new outage (a loss after the stable "
        "period); the PRNG is not reseeded, so the second outage draws fresh jitter.",
        {"seed": 99, "immediate_first_retry": False},
        scenario="S23",
    )
    v.step(0, start())
    v.step(0, fail(1))
    v.fire()
    v.step(v.steps[-1]["at_ms"], fail(2))
    v.fire()
    t = v.steps[-1]["at_ms"]
    v.step(t, ok(3))
    v.step(t + 20000, lost(3), "stable: a new outage, step 1 again")
    v.fire()
    v.step(v.steps[-1]["at_ms"], fail(4))
    v.fire()


def s23_invalid():
    cases = [
        ("s23-invalid-multiplier", "A multiplier below 1 is rejected.",
         {"backoff": {"multiplier": 0.5}}, "multiplier_below_one"),
        ("s23-invalid-cap-below-initial", "A cap below the first delay is rejected.",
         {"backoff": {"initial_ms": 5000, "max_ms": 1000}}, "cap_below_initial"),
        ("s23-invalid-zero-initial", "A first delay of 0 ms is rejected.",
         {"backoff": {"initial_ms": 0}}, "zero"),
        ("s23-invalid-jitter-fraction", "A proportional fraction outside [0, 1] is rejected.",
         {"backoff": {"jitter": {"mode": "proportional", "fraction": 1.5}}},
         "jitter_out_of_range"),
        ("s23-invalid-zero-attempts", "max_attempts 0 would never try: rejected.",
         {"max_attempts": 0}, "zero_attempts"),
        ("s23-invalid-zero-stable-period", "A stable period of 0 ms is rejected.",
         {"stable_period_ms": 0}, "zero"),
        ("s23-invalid-blocked-timeout", "A blocked timeout below twice the liveness timeout "
         "is rejected.", {"liveness_timeout_ms": 60000, "blocked_timeout_ms": 90000},
         "blocked_timeout_too_short"),
        ("s23-invalid-too-large", "A duration above 2^30 ms is rejected.",
         {"connect_timeout_ms": 1073741825}, "too_large"),
    ]
    for name, desc, cfg, err in cases:
        ConfigErrorVector(name, desc, cfg, err)


def s29():
    v = Vector(
        "s29-liveness-detection-bound",
        "S29: checks run every H/2 (H = 60 s) after the link comes up; two checks in a "
        "row without inbound activity declare it dead. Activity at 40 s is seen by the "
        "check at 60 s; checks at 90 s and 120 s miss: dead at 120 s, 80 s (within "
        "[H, 1.5H]) after the last inbound frame.",
        {"seed": 29},
        scenario="S29",
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(10000, activity(1))
    v.fire("check at 30 s: saw activity, reset")
    v.step(40000, activity(1), "the last inbound frame")
    v.fire("check at 60 s: saw activity, reset")
    v.fire("check at 90 s: missed 1")
    v.fire("check at 120 s: missed 2: dead, 80 s after the last frame")


def s34():
    v = Vector(
        "s34-retry-budget-exhausted-then-reconnect",
        "S34: max_attempts 3; attempts 1-3 fail: failed(retries_exhausted) with one "
        "gave_up; failed is sticky (no timer, reports ignored or stale); once the broker "
        "is back, reconnect_now starts a new outage at attempt 1 and succeeds.",
        {"seed": 34, "max_attempts": 3},
        scenario="S34",
    )
    v.step(0, start())
    v.step(5, fail(1))
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 5, fail(2))
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 5, fail(3), "the third failure: give up")
    v.step(v.steps[-1]["at_ms"] + 60000, timeout(), "ignored: no probe, no second gave_up")
    v.step(v.steps[-1]["at_ms"], fail(3), "stale")
    v.step(300000, reconnect(), "the broker is back; the user asks")
    v.step(300050, ok(4))


def s35():
    v = Vector(
        "s35-publish-during-backoff-no-extra-attempt",
        "S35: the next attempt is due in 8 s. Whatever the application does meanwhile "
        "(the driver wakes spuriously, reports about the closed link arrive) triggers no "
        "attempt; the time left (timeout_ms - at_ms) is the retry_after to report.",
        {"seed": 35, "backoff": {"initial_ms": 2000, "multiplier": 2.0, "max_ms": 60000,
                                 "jitter": {"mode": "none"}}},
        scenario="S35",
    )
    v.step(0, start())
    v.step(0, fail(1))
    v.fire()
    v.step(2000, fail(2))
    v.fire()
    v.step(6000, fail(3), "next attempt in 8000 ms")
    v.step(7000, timeout(), "a publish wakes the driver: ignored, retry_after 7000")
    v.step(7000, lost(3), "stale")
    v.step(7000, activity(4), "ignored: generation 4 is not open")
    v.step(13999, timeout(), "ignored: 1 ms early")
    v.fire("the attempt runs at its time, not earlier")


def s38():
    v = Vector(
        "s38-permanent-error-stops",
        "S38: a permanent error (bad credentials) is not retried: one open, close, "
        "failed(permanent), one gave_up; nothing more over 10 x dmax; recovery only "
        "through reconnect_now.",
        {"seed": 38},
        scenario="S38",
    )
    v.step(0, start())
    v.step(30, fail(1, "permanent"))
    v.step(600000, timeout(), "ignored: no retry")
    v.step(600000, fail(1, "permanent"), "stale")
    v.step(600100, reconnect(), "fixed credentials: explicit reconnect")
    v.step(600200, ok(2))


def s38_retries():
    v = Vector(
        "s38-permanent-retries",
        "S38 with permanent_retries 2: the first two permanent failures of an outage are "
        "retried like transient ones (K = 3 opens), the third gives up.",
        {"seed": 380, "permanent_retries": 2},
        scenario="S38",
    )
    v.step(0, start())
    v.step(30, fail(1, "permanent"))
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 30, fail(2, "permanent"))
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 30, fail(3, "permanent"))


def s38_link():
    v = Vector(
        "s38-permanent-link-loss",
        "A connected link lost with a permanent error (for example the vhost was deleted) "
        "is closed and the machine gives up at once.",
        {"seed": 381},
        scenario="S38",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(20000, lost(1, "permanent"))


def s40():
    v = Vector(
        "s40-flapping-link-backs-off",
        "S40: the link comes up and drops 100 ms later, again and again. A link lost "
        "before the stable period (10 s) counts as a failed attempt, so the attempt "
        "counter keeps rising and the delays grow (1, 2, 4, 8 s: 4 opens in the first "
        "10 s). Once a link stays up past the stable period, its loss starts a new outage "
        "with an immediate retry at attempt 1. Without a retry budget (the next vector "
        "has the default one).",
        {"seed": 40, "backoff": {"initial_ms": 1000, "multiplier": 2.0, "max_ms": 60000,
                                 "jitter": {"mode": "none"}}, "retry_budget": None},
        scenario="S40",
    )
    v.step(0, start())
    v.step(50, ok(1))
    v.step(150, lost(1))
    for g in (2, 3, 4, 5):
        v.fire()
        t = v.steps[-1]["at_ms"]
        v.step(t + 50, ok(g))
        if g < 5:
            v.step(t + 150, lost(g))
    t = v.steps[-1]["at_ms"]
    v.step(t + 25000, lost(5), "up 25 s: stable, the counter resets")


def s40_budget():
    v = Vector(
        "s40-flapping-link-with-retry-budget",
        "S40 with the default retry budget (3 at once, one more per 2 s): the link comes "
        "up and drops 100 ms later, for 20 s. The first three early losses are retried at "
        "once; after that an early loss is retried at once only when the budget earned a "
        "token, every other one waits its backoff delay, and the delays keep growing "
        "(1, 2, 4, 8 s): the budget adds at most one attempt per 2 s to the schedule.",
        {"seed": 40, "backoff": {"initial_ms": 1000, "multiplier": 2.0, "max_ms": 60000,
                                 "jitter": {"mode": "none"}}},
        scenario="S40",
    )
    v.step(0, start())
    v.step(50, ok(1))
    v.step(150, lost(1))
    t = 150
    while t < 20000:
        if v.m.kind() == "backing_off":
            v.fire("the backoff delay")
            t = v.steps[-1]["at_ms"]
        g = v.gen
        v.step(t + 50, ok(g))
        v.step(t + 150, lost(g))
        t += 150


def budget_rules():
    v = Vector(
        "retry-budget-rules",
        "The retry budget spends a token only on an up link's early loss (a failed "
        "attempt backs off without one), earns one token per refill_ms up to burst (time "
        "earned toward the next token is kept), and a stable link's loss needs no token.",
        plain(stable_period_ms=10000, liveness_timeout_ms=None,
              retry_budget={"burst": 2, "refill_ms": 5000}),
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(100, lost(1), "early loss: token 1 of 2, attempt 2 at once")
    v.step(110, fail(2), "a failed attempt backs off: no token spent")
    v.fire()
    t = v.steps[-1]["at_ms"]
    v.step(t + 10, ok(v.gen))
    v.step(t + 20, lost(v.gen), "early loss: the last token")
    v.step(t + 30, ok(v.gen))
    v.step(t + 40, lost(v.gen), "early loss, budget empty: backoff")
    v.fire()
    t = v.steps[-1]["at_ms"]
    v.step(t + 10, ok(v.gen))
    v.step(t + 20, lost(v.gen), "still empty: backoff, the delay grew")
    v.fire()
    t = v.steps[-1]["at_ms"]
    v.step(t + 10, ok(v.gen))
    v.step(t + 20, lost(v.gen), "one token earned 5 s after the first was spent: at once")
    v.step(t + 30, ok(v.gen))
    v.step(t + 12030, lost(v.gen), "up 12 s: stable, a new outage, at once without a token")


def budget_config_errors():
    ConfigErrorVector("config-retry-budget-zero-burst",
                      "A retry budget with a burst of 0 is rejected.",
                      {"retry_budget": {"burst": 0, "refill_ms": 1000}}, "zero")
    ConfigErrorVector("config-retry-budget-zero-refill",
                      "A retry budget refilled every 0 ms is rejected.",
                      {"retry_budget": {"burst": 1, "refill_ms": 0}}, "zero")


def s41():
    v = Vector(
        "s41-reconnect-during-shutdown",
        "S41: during closing, the interrupt caused by our own close is stale, "
        "reconnect_now is ignored (no open after shutdown began), close_completed ends in "
        "closed, and a second shutdown is ignored with no further close.",
        dict(DEFAULT),
        scenario="S41",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(5000, shutdown())
    v.step(5001, lost(1), "Interrupted(1) caused by our own close: stale")
    v.step(5002, reconnect(), "ignored: shutting down")
    v.step(5003, lost(1), "the stale start-step: stale")
    v.step(5100, close_completed())
    v.step(5200, shutdown(), "ignored: no further close")
    v.step(5200, reconnect(), "ignored: closed is terminal")


def s43():
    v = Vector(
        "s43-concurrent-interrupt-storm",
        "S43: 16 reporters each report the loss of generation 1, some twice, in the same "
        "millisecond: one close, one open, one connected -> connecting transition; every "
        "other report is stale. The same holds for the next link: its loss is acted on "
        "once and the attempt trace is 1, 2 with no gaps or repeats.",
        dict(DEFAULT),
        scenario="S43",
    )
    v.step(0, start())
    v.step(10, ok(1))
    for i in range(20):
        v.step(20000, lost(1), None if i == 0 else "stale duplicate")
    v.step(20010, ok(2))
    for i in range(6):
        v.step(20500, lost(2), None if i == 0 else "stale duplicate")
    v.fire()


# ---- probes ---------------------------------------------------------------------

def row_backing_off_probing():
    v = Vector(
        "row-backing-off-probing",
        "Row backing_off with probes (probe_interval_ms set), every column: when the "
        "wait ends a probe goes out instead of an open; an unreachable answer leaves the "
        "next probe for when this one's time is up; an unanswered probe is replaced at "
        "its time and its late answer is stale, as is any answer in another state; a "
        "reachable answer opens. reconnect_now opens at once, shutdown closes.",
        plain(probe_interval_ms=500),
        rows=["backing_off"],
    )
    v.step(0, start())
    v.step(10, fail(1))
    v.step(20, probed(1, "reachable"), "stale: no probe was sent yet")
    v.fire("the wait is over: probe 1, no open")
    v.step(1020, start(), "ignored")
    for i in all_generation_inputs(2):
        v.step(1020, i, "ignored: generation 2 is current but not opened yet")
    v.step(1020, close_completed())
    v.step(1030, probed(1, "unreachable"), "the next probe at 1510")
    v.step(1040, probed(1, "reachable"), "stale: probe 1 was answered")
    v.step(1500, timeout(), "ignored: the next probe is due at 1510")
    v.fire("probe 2")
    v.fire("probe 2 unanswered for 500 ms: probe 3")
    v.step(2020, probed(2, "reachable"), "stale: probe 2's time is up")
    v.step(2030, probed(3, "reachable"), "opens attempt 2")
    v.step(2040, probed(3, "reachable"), "stale: not backing off")
    v.step(2050, fail(2))
    v.fire("probe 4")
    v.step(4060, reconnect(), "opens at once; probe 4 is dropped")
    v.step(4070, probed(4, "reachable"), "stale")
    v.step(4080, fail(3))
    v.fire("probe 5")
    v.step(8090, shutdown(), "no link to close")
    v.step(8100, probed(5, "reachable"), "stale: closed")


def s44():
    v = Vector(
        "s44-outage-recovered-by-probes",
        "S44: the broker goes down for 10 s. The stable link's loss is retried at once "
        "and refused; after the first backoff delay the machine probes every 500 ms "
        "instead of making attempts (refused probes, then probes that get no answer); "
        "the first probe answered after the broker is back opens attempt 2, which "
        "connects. One failed attempt in the whole outage.",
        plain(probe_interval_ms=500, stable_period_ms=10000, liveness_timeout_ms=None),
        scenario="S44",
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(12000, lost(1), "stable: a new outage, retried at once")
    v.step(12005, fail(2), "refused")
    v.fire("the wait is over: probe")
    t = v.steps[-1]["at_ms"]
    p = 1
    while t + 500 <= 22000:
        v.step(t + 2, probed(p, "unreachable"), "refused")
        v.fire()
        t = v.steps[-1]["at_ms"]
        p += 1
    v.fire("unanswered: the next probe")
    p += 1
    t = v.steps[-1]["at_ms"]
    v.step(t + 3, probed(p, "reachable"), "the broker is back")
    v.step(t + 20, ok(3))


def probe_rules():
    v = Vector(
        "probe-rules",
        "A transport that cannot probe answers unsupported: the attempt opens at once "
        "and the machine never probes again (the next wait ends in an open). A lingering "
        "link is never probed around: its wait ends in close and open.",
        plain(probe_interval_ms=500),
    )
    v.step(0, start())
    v.step(10, fail(1))
    v.fire("probe 1")
    v.step(1020, probed(1, "unsupported"), "opens attempt 2, probing ends")
    v.step(1030, fail(2))
    v.fire("no probe: an open")
    w = Vector(
        "probe-lingering",
        "With a resume grace, a lost link lingers through the wait and the wait ends in "
        "its close and an open, without a probe; the next wait, with no link lingering, "
        "is probed.",
        plain(probe_interval_ms=500, resume_grace_ms=3000),
    )
    w.step(0, start())
    w.step(10, ok(1))
    w.step(2000, lost(1), "stable: lingers for the grace")
    w.fire("close the lingering link and open: no probe")
    w.step(5010, fail(2))
    w.fire("probe 1")
    u = Vector(
        "probe-max-elapsed",
        "With max_elapsed_ms, a probe is sent only while one more interval fits in the "
        "budget; past that the last attempt is made at once, and its failure gives up.",
        plain(probe_interval_ms=500, max_elapsed_ms=2500),
    )
    u.step(0, start())
    u.step(10, fail(1))
    u.fire("probe 1 at 1010")
    u.step(1020, probed(1, "unreachable"))
    u.fire("probe 2 at 1510")
    u.fire("2010 + 500 > 2500: the last attempt instead of probe 3")
    u.step(2020, fail(2), "gives up")
    x = Vector(
        "probe-stale-everywhere",
        "An answer to a probe is stale in every state but backing_off with that probe "
        "unanswered: idle, connecting, connected, blocked, closing, closed and failed "
        "count it in stale_inputs and change nothing.",
        plain(probe_interval_ms=500, blocked_timeout_ms=None, max_attempts=1),
    )
    x.step(0, probed(1, "reachable"), "idle")
    x.step(0, start())
    x.step(5, probed(1, "reachable"), "connecting")
    x.step(10, ok(1))
    x.step(15, probed(1, "unsupported"), "connected")
    x.step(20, blocked(1))
    x.step(25, probed(1, "unreachable"), "blocked")
    x.step(30, shutdown())
    x.step(35, probed(1, "reachable"), "closing")
    x.step(40, close_completed())
    x.step(45, probed(1, "reachable"), "closed")
    y = Vector(
        "probe-stale-failed",
        "In failed, an answer to a probe is stale.",
        plain(probe_interval_ms=500, max_attempts=1),
    )
    y.step(0, start())
    y.step(10, fail(1), "max_attempts 1: gives up")
    y.step(20, probed(1, "reachable"), "failed")
    ConfigErrorVector("config-probe-interval-zero",
                      "A probe interval of 0 is rejected.",
                      {"probe_interval_ms": 0}, "zero")


# ---- branches -------------------------------------------------------------------

def branches():
    v = Vector(
        "stable-period-boundary",
        "The stable period is evaluated when the link is lost: up exactly "
        "stable_period_ms is stable (new outage, immediate retry at attempt 1); up one "
        "millisecond less counts as a failed attempt (backoff, attempt 2; no retry budget).",
        plain(stable_period_ms=3000, liveness_timeout_ms=None, retry_budget=None),
    )
    v.step(0, start())
    v.step(100, ok(1))
    v.step(3100, lost(1), "up exactly 3000 ms: stable")
    v.step(3100, ok(2))
    v.step(6099, lost(2), "up 2999 ms: not stable, a failed attempt")
    v.fire()

    v = Vector(
        "immediate-first-retry-off",
        "With immediate_first_retry false, the first attempt after losing a stable link "
        "waits for the step-1 delay too.",
        plain(immediate_first_retry=False),
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(1500, lost(1))
    v.fire()
    v.step(2500, ok(2))

    v = Vector(
        "max-elapsed",
        "max_elapsed_ms 7300: the outage began at the start (0 ms); a wait that would "
        "end exactly at 7300 ms is allowed; the next one would end after it: the machine "
        "gives up (deadline_exhausted) instead of waiting.",
        plain(max_elapsed_ms=7300, liveness_timeout_ms=None),
    )
    v.step(0, start())
    v.step(100, fail(1), "wait 1000: ends at 1100")
    v.fire()
    v.step(1200, fail(2), "wait 2000: ends at 3200")
    v.fire()
    v.step(3300, fail(3), "wait 4000: ends at 7300 = max_elapsed: allowed")
    v.fire()
    v.step(7300, fail(4), "wait 8000 would end at 15300 > 7300: give up")

    v = Vector(
        "max-elapsed-cuts-the-first-wait",
        "Every outage gets at least one attempt: a resume grace (30000) longer than "
        "max_elapsed_ms (10000) is cut to the budget left instead of giving up untried; "
        "once that attempt fails, the deadline applies.",
        plain(max_elapsed_ms=10000, resume_grace_ms=30000, liveness_timeout_ms=None),
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(60000, lost(1), "stable: new outage; the wait is cut from 30000 to 10000")
    v.fire("close the lingering link, open attempt 1")
    v.step(70100, fail(2), "10100 ms into a 10000 ms budget: give up")

    v = Vector(
        "max-attempts-flapping-lingering",
        "max_attempts counts links lost before the stable period as failed attempts; "
        "giving up closes a lingering link first.",
        plain(max_attempts=2, resume_grace_ms=500),
    )
    v.step(0, start())
    v.step(0, fail(1))
    v.fire()
    v.step(1000, ok(2))
    v.step(1200, lost(2), "up 200 ms: attempt 2 failed; 2 of 2 used: give up")

    v = Vector(
        "resume-grace-after-failed-attempts",
        "When the lost link was not stable, its wait is the larger of the backoff delay "
        "and the resume grace; a resume then keeps the attempt counter (the next loss "
        "backs off further).",
        plain(resume_grace_ms=1500, liveness_timeout_ms=None),
    )
    v.step(0, start())
    v.step(0, fail(1))
    v.fire()
    v.step(1000, ok(2))
    v.step(1200, lost(2), "not stable: wait max(2000 backoff, 1500 grace)")
    v.step(1300, resumed(2), "resumed: counts as attempt 3")
    v.step(1400, lost(2), "wait max(4000, 1500)")
    v.fire("close the lingering link, open attempt 3")

    v = Vector(
        "resume-flapping-within-grace",
        "A link that the transport keeps restoring by itself within the grace is not "
        "replaced while it resumes, but each resume counts as an attempt of the outage, "
        "so each early loss backs off: the wait is the larger of the backoff delay and "
        "the grace.",
        plain(resume_grace_ms=1000, liveness_timeout_ms=None),
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(2000, lost(1), "stable: new outage")
    v.step(2100, resumed(1))
    v.step(2200, lost(1), "not stable: a failed attempt, wait max(backoff, grace)")
    v.step(2300, resumed(1))
    v.step(2400, lost(1))
    v.fire()

    v = Vector(
        "reconnect-now-from-backing-off-keeps-counter",
        "reconnect_now during a backoff wait skips the wait but stays in the same "
        "outage: the attempt counter and the backoff step continue.",
        plain(liveness_timeout_ms=None),
    )
    v.step(0, start())
    v.step(0, fail(1))
    v.step(10, reconnect())
    v.step(20, fail(2), "backoff step 2: 2000 ms")
    v.fire()
    v.step(2030, fail(3), "step 3: 4000 ms")

    v = Vector(
        "reconnect-now-from-connected-resets-counter",
        "reconnect_now on an up link starts a new outage even if the link was not yet "
        "stable: the attempt counter and the backoff restart.",
        plain(stable_period_ms=10000, liveness_timeout_ms=None),
    )
    v.step(0, start())
    v.step(0, fail(1))
    v.fire()
    v.step(1000, ok(2), "attempt 2")
    v.step(1100, reconnect(), "attempt 1 of a new outage")
    v.step(1200, fail(3), "backoff step 1: 1000 ms")

    v = Vector(
        "liveness-silent-from-connect",
        "A link that never receives anything dies exactly H after it came up "
        "(checks at H/2 and H). With an odd H, H/2 is rounded down: H = 4001 gives "
        "checks every 2000 ms.",
        plain(liveness_timeout_ms=4001, stable_period_ms=1000),
    )
    v.step(0, start())
    v.step(7, ok(1))
    v.fire("missed 1")
    v.fire("missed 2: dead 4000 ms after connect")

    v = Vector(
        "liveness-detection-bounds",
        "Death lands in [H, 1.5 H] after the last inbound frame (H = 4000, checks every "
        "2000 ms): activity 1 ms before a check is seen by it (death H + 1 after the "
        "frame); activity 1 ms after a check waits for the next one (death 1.5 H - 1 "
        "after the frame).",
        plain(liveness_timeout_ms=4000, stable_period_ms=1000),
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(1999, activity(1), "1 ms before the check")
    v.fire("seen: reset")
    v.fire("missed 1")
    v.fire("missed 2: dead at 6000, 4001 ms after the frame")
    v.step(6000, ok(2))
    v.fire("check at 8000: missed 1")
    v.step(8001, activity(2), "1 ms after the check")
    v.fire("check at 10000: seen, reset")
    v.fire("missed 1")
    v.fire("missed 2: dead at 14000, 5999 ms after the frame")

    v = Vector(
        "liveness-time-jump",
        "A timeout long after several checks were due runs at most three checks at once "
        "(a reset, then two misses) and declares the link dead at the time of the "
        "timeout; the next link gets fresh checks.",
        plain(liveness_timeout_ms=4000, stable_period_ms=1000),
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(1000, activity(1))
    v.step(50000, timeout(), "checks due at 2000 (reset), 4000 (missed 1), 6000 (missed 2)")

    v = Vector(
        "liveness-disabled",
        "With liveness_timeout_ms null the watchdog is off: a connected link has no timer, "
        "activity is accepted and timeouts are ignored.",
        plain(liveness_timeout_ms=None),
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(100, activity(1))
    v.step(1000000, timeout(), "ignored: no timer")

    v = Vector(
        "unblocked-keeps-liveness",
        "blocked/unblocked do not restart the liveness checks or the stable period: the "
        "link keeps its schedule and its start time.",
        plain(liveness_timeout_ms=4000, stable_period_ms=3000),
    )
    v.step(0, start())
    v.step(0, ok(1))
    v.step(1500, blocked(1))
    v.fire("check at 2000: missed 1 (still blocked)")
    v.step(2500, unblocked(1), "keeps missed 1 and the next check at 4000")
    v.fire("missed 2: dead; up 4000 ms since the open >= 3000: stable, immediate retry")

    v = Vector(
        "clock-never-goes-back",
        "A now earlier than one already seen is treated as the latest one seen: deadlines "
        "are computed from the clamped time, and a timeout fed with an earlier time is "
        "judged at the clamped time.",
        plain(liveness_timeout_ms=None),
    )
    v.step(0, start())
    v.step(3000, fail(1), "the wait ends at 4000")
    v.step(1000, reconnect(), "handled at 3000: the connect deadline is 8000, not 6000")
    v.step(2000, timeout(), "judged at 3000: not due, ignored")
    v.step(8000, timeout(), "the connect deadline")

    v = Vector(
        "resumed-link-liveness-loss-respects-max-elapsed",
        "A stable link is lost at 10500 (new outage) and resumes within the grace (the "
        "resume is attempt 1); it dies by liveness 4000 ms later, before the stable "
        "period: a failed attempt, so it backs off, and max_elapsed_ms (4000) applies: "
        "the outage is already 4500 ms old, so the machine gives up.",
        plain(stable_period_ms=10000, resume_grace_ms=1000, max_elapsed_ms=4000),
    )
    v.step(0, start())
    v.step(0, ok(1))
    for t in (1000, 3000, 5000, 7000, 9000):
        v.step(t, activity(1))
        v.fire()
    v.step(10500, lost(1), "up 10500 ms: stable, a new outage starts at 10500")
    v.step(11000, resumed(1))
    v.fire("missed 1")
    v.fire("missed 2 at 15000: 4500 ms into a 4000 ms budget: give up")

    v = Vector(
        "permanent-loss-during-open",
        "link_lost with kind permanent while the link is still opening is a permanent "
        "failed attempt: close, give up.",
        plain(),
    )
    v.step(0, start())
    v.step(40, lost(1, "permanent"))


def poll_clamp():
    v = Vector(
        "poll-judges-at-the-clamped-now",
        "poll(now) judges a due timer at the clamped now (section 2), as handle(now, "
        "timeout) would. start opens attempt 1 with its connect deadline at 20000. At "
        "20100, activity(1) is fed without draining (drain false): it is ignored in "
        "connecting, but the clock reading becomes 20100, so the deadline 20000 is due and "
        "not yet fired. The next step feeds no input (input null) and only drains "
        "poll(19990): 19990 is earlier than the reading, so it compares as 20100 >= 20000 "
        "and poll fires the connect timeout: close(1, connect_timeout), connecting -> "
        "backing_off (generation 2, attempt 2), the wait of 652 ms counted from the "
        "clamped 20100, until 20752. A port comparing the raw 19990 with the deadline "
        "fires nothing (no outputs, still connecting with attempt 1 of generation 1, "
        "timeout_ms 20000); one that fires but counts the wait from the raw now gives "
        "20642. The wait then ends as usual: open(2) at 20752.",
        {"seed": 42},
    )
    v.step(0, start(), "connect deadline at 20000")
    v.step(20100, activity(1), "ignored in connecting; the clock reading is now 20100, and "
           "the deadline 20000 is due but not fired (no drain)", drain=False)
    v.step(19990, None, "no input: drain poll(19990), judged at the clamped 20100: the "
           "connect timeout fires")
    v.fire("the wait is over: attempt 2")
    v.step(20800, ok(2))


# ---- endpoints (section 12.1) ----------------------------------------------------

def endpoints_shuffle():
    for seed, order in ((0, [0, 2, 1]), (3, [1, 2, 0]), (5, [1, 0, 2])):
        a, b, c = order
        v = Vector(
            f"endpoints-shuffle-seed-{seed}",
            f"3 endpoints, seed {seed}: SHUFFLE gives the order {order}. start opens at "
            f"order[0] = {a}. Each failed try of the round (attempt_failed, link_lost while "
            f"connecting, the connect timeout) moves to the next endpoint at once, through a "
            f"zero wait in backing_off (connecting -> backing_off -> connecting in one step, "
            f"no PRNG draw): attempt 2 at {b}, attempt 3 at {c}. The third failure ends the "
            f"round: the backoff wait of step 1 (1000 ms), then attempt 4 at {a} begins a new "
            f"round; its failure moves on to {b} at once, which connects.",
            plain(seed=seed, endpoints=3, liveness_timeout_ms=None),
        )
        v.step(0, start(), f"order[0] = {a}")
        v.step(10, fail(1), f"endpoint {a} failed: endpoint {b} at once, a zero wait")
        v.step(20, lost(2), f"endpoint {b} died while opening: endpoint {c} at once")
        v.fire(f"endpoint {c} timed out: the round is over, back off 1000 ms")
        v.fire(f"a new round at endpoint {a}")
        v.step(6030, fail(4), f"endpoint {b} at once")
        v.step(6040, ok(5), f"connected to endpoint {b}")


def endpoints_failover():
    v = Vector(
        "endpoints-failover-after-stable-loss",
        "3 endpoints, seed 3 (order [1, 2, 0]): a link on endpoint 1 is lost after the "
        "stable period: a new outage and a new round at the same endpoint, retried at once "
        "(the node that was healthy). That attempt fails: endpoint 2 at once, through a zero "
        "wait, which connects. The cursor stays on endpoint 2: its next stable loss is "
        "retried there.",
        plain(seed=3, endpoints=3, liveness_timeout_ms=None),
    )
    v.step(0, start(), "endpoint 1")
    v.step(10, ok(1))
    v.step(5000, lost(1), "up 4990 ms: stable, a new outage, attempt 1 at endpoint 1 again")
    v.step(5010, fail(2), "endpoint 1 is down: endpoint 2 at once, attempt 2")
    v.step(5020, ok(3), "connected to endpoint 2")
    v.step(9000, lost(3), "stable: a new outage, attempt 1 at endpoint 2")
    v.step(9010, ok(4))


def endpoints_early_loss():
    v = Vector(
        "endpoints-early-loss-moves-on",
        "3 endpoints, seed 5 (order [1, 0, 2]), retry budget of burst 1 per 5000 ms. A link "
        "lost before the stable period is a failed try: while the round has an untried "
        "endpoint the next attempt goes to it at once (connected -> connecting directly, "
        "no zero wait, no retry token, no PRNG draw). When the round is over the rules of "
        "one endpoint apply: the first round's end spends the only token (attempt 4 at "
        "once, at endpoint 1 again), the second round's end finds the budget empty and "
        "backs off 1000 ms (step 1).",
        plain(seed=5, endpoints=3, stable_period_ms=10000, liveness_timeout_ms=None,
              retry_budget={"burst": 1, "refill_ms": 5000}),
    )
    v.step(0, start(), "endpoint 1")
    t = 0
    for n, (e, nxt, note) in enumerate([
        (1, 0, "early loss: endpoint 0 at once, no token"),
        (0, 2, "early loss: endpoint 2 at once, no token"),
        (2, 1, "early loss ends the round: the budget's token, endpoint 1 at once"),
        (1, 0, "early loss: endpoint 0 at once, no token"),
        (0, 2, "early loss: endpoint 2 at once, no token"),
        (2, 1, "early loss ends the round, the budget is empty: back off 1000 ms"),
    ], start=1):
        v.step(t + 10, ok(n), f"connected to endpoint {e}")
        v.step(t + 100, lost(n), note)
        t += 100
    v.fire("the wait is over: attempt 7 at endpoint 1")
    v.step(1700, ok(7))


def endpoints_probe_round():
    v = Vector(
        "endpoints-probe-round",
        "3 endpoints, seed 3 (order [1, 2, 0]), probe_interval_ms 500. A round of three "
        "failed attempts, then the backoff wait (1000 ms); then probes: an unreachable "
        "answer moves to the next endpoint's probe at once; after a whole round of "
        "unreachable answers the next probe (endpoint 1 again) starts one interval after "
        "the last one began. A probe unanswered for the interval counts as unreachable: "
        "the next endpoint's probe. A reachable answer opens attempt 4 at the probed "
        "endpoint (2). Probes are tries of the round: that attempt's failure moves on to "
        "the round's last untried endpoint (0) at once, which connects.",
        plain(seed=3, endpoints=3, probe_interval_ms=500, liveness_timeout_ms=None),
    )
    v.step(0, start(), "endpoint 1")
    v.step(10, fail(1), "endpoint 2 at once")
    v.step(20, fail(2), "endpoint 0 at once")
    v.step(30, fail(3), "the round is over: back off 1000 ms")
    v.fire("the wait is over: probe 1 at endpoint 1")
    v.step(1040, probed(1, "unreachable"), "probe 2 at endpoint 2 at once")
    v.step(1050, probed(2, "unreachable"), "probe 3 at endpoint 0 at once")
    v.step(1060, probed(3, "unreachable"),
           "the probe round is over: the next probe when probe 3's interval ends (1550)")
    v.step(1070, probed(3, "unreachable"), "stale: probe 3 was answered")
    v.fire("probe 4 at endpoint 1")
    v.fire("probe 4 unanswered: counts as unreachable, probe 5 at endpoint 2")
    v.step(2060, probed(4, "reachable"), "stale: probe 4's time is up")
    v.step(2070, probed(5, "reachable"), "attempt 4 at endpoint 2")
    v.step(2080, fail(4), "endpoint 0 is the round's last untried one: at once")
    v.step(2090, ok(5), "connected to endpoint 0")


def endpoints_lingering():
    v = Vector(
        "endpoints-lingering-keeps-endpoint",
        "3 endpoints, seed 3 (order [1, 2, 0]), resume_grace_ms 3000. A lost link lingers "
        "without ADVANCE: the endpoint stays 1, and the link resumes there. Lost again "
        "before the stable period, it lingers again (wait max(1000, 3000)); when the grace "
        "ends, the lingering link is closed and the next attempt opens at the same endpoint "
        "1. Its failure moves on to endpoint 2 at once.",
        plain(seed=3, endpoints=3, resume_grace_ms=3000, liveness_timeout_ms=None),
    )
    v.step(0, start(), "endpoint 1")
    v.step(10, ok(1))
    v.step(2000, lost(1), "stable: a new outage, the link lingers on endpoint 1")
    v.step(2500, resumed(1), "resumed on endpoint 1 (attempt 1 of the outage)")
    v.step(2700, lost(1), "up 200 ms: a failed attempt, lingering again, no ADVANCE")
    v.fire("the grace is over: close it, attempt 2 at endpoint 1")
    v.step(5710, fail(2), "endpoint 2 at once")
    v.step(5720, ok(3))


def endpoints_reconnect():
    v = Vector(
        "endpoints-reconnect-now-and-failed",
        "3 endpoints, seed 3 (order [1, 2, 0]), max_attempts 2. reconnect_now on an up "
        "link starts a new outage and a new round at the link's endpoint (1). A failure "
        "moves on to endpoint 2 at once; its failure advances the cursor to endpoint 0, "
        "but max_attempts is reached: give up in the middle of the round. reconnect_now in "
        "failed begins a new round at the cursor (endpoint 0), whose failure moves on to "
        "endpoint 1 at once.",
        plain(seed=3, endpoints=3, max_attempts=2, liveness_timeout_ms=None),
    )
    v.step(0, start(), "endpoint 1")
    v.step(10, ok(1))
    v.step(100, reconnect(), "a new outage at the same endpoint 1")
    v.step(110, fail(2), "endpoint 2 at once, attempt 2")
    v.step(120, fail(3), "2 of 2 attempts used: give up; the cursor moved to endpoint 0")
    v.step(200, reconnect(), "a new outage and round at endpoint 0")
    v.step(210, fail(4), "endpoint 1 at once, attempt 2")
    v.step(220, ok(5))


def endpoints_max_elapsed():
    v = Vector(
        "endpoints-max-elapsed",
        "3 endpoints, seed 3 (order [1, 2, 0]), max_elapsed_ms 3000, the outage began at "
        "0. A failed try moves on to the round's next endpoint at once only while "
        "now - outage.started <= max_elapsed_ms (3000 is still allowed); at 3001 the round "
        "has endpoint 0 untried, but the move falls through to the normal schedule, whose "
        "wait (1000 ms, step 1) would end past the limit: give up (deadline_exhausted).",
        plain(seed=3, endpoints=3, max_elapsed_ms=3000, connect_timeout_ms=5000,
              liveness_timeout_ms=None),
    )
    v.step(0, start(), "endpoint 1")
    v.step(3000, fail(1), "3000 ms into a 3000 ms budget: endpoint 2 at once")
    v.step(3001, fail(2), "3001 > 3000: no move within the round; give up")


def endpoints_stale():
    v = Vector(
        "endpoints-two-stale-reports",
        "2 endpoints, seed 1 (order [1, 0]): reports naming an older or a newer "
        "generation are stale as with one endpoint: in connecting after a zero wait, in "
        "connected, and in backing_off after a round; they change neither the state nor "
        "the endpoint. The generation the next open will use is ignored in backing_off.",
        plain(seed=1, endpoints=2, liveness_timeout_ms=None),
    )
    v.step(0, start(), "endpoint 1")
    v.step(10, fail(1), "endpoint 0 at once, generation 2")
    v.step(20, fail(1), "stale")
    v.step(20, lost(1), "stale")
    v.step(20, ok(3), "stale: newer")
    v.step(30, ok(2), "connected to endpoint 0")
    v.step(40, lost(1), "stale")
    v.step(40, resumed(3), "stale: newer")
    v.step(5000, lost(2), "stable: a new outage at endpoint 0, generation 3")
    v.step(5010, fail(3), "endpoint 1 at once, generation 4")
    v.step(5020, fail(4), "the round is over: back off 1000 ms")
    v.step(5030, fail(4), "stale")
    v.step(5030, lost(3), "stale")
    v.step(5030, ok(6), "stale: newer")
    v.step(5030, ok(5), "ignored: generation 5 is current but not opened yet")
    v.step(5030, probed(1, "reachable"), "stale: no probe")
    v.fire("a new round at endpoint 0, generation 5")
    v.step(6030, ok(5))


def endpoints_config():
    ConfigErrorVector("config-endpoints-zero",
                      "A configuration with 0 endpoints is rejected.",
                      {"endpoints": 0}, "endpoints_out_of_range")
    ConfigErrorVector("config-endpoints-too-many",
                      "A configuration with 1025 endpoints (more than 1024) is rejected.",
                      {"endpoints": 1025}, "endpoints_out_of_range")
    v = Vector(
        "config-endpoints-1024",
        "1024 endpoints, the most allowed, seed 0: start opens at order[0] of the "
        "1024-element shuffle, and a failure moves on to order[1] at once.",
        plain(seed=0, endpoints=1024, liveness_timeout_ms=None),
    )
    o = v.m.order
    v.step(0, start(), f"order[0] = {o[0]}")
    v.step(10, fail(1), f"order[1] = {o[1]} at once")
    v.step(20, ok(2))


# ---- embedding (section 19.1) -------------------------------------------------------

def adoption():
    v = Vector(
        "adopt-first-link",
        "Adoption (section 12): the application opened generation 1 itself and feeds "
        "adopt(1) in idle: SC(idle -> connected, 1, adopted), no open, the link's attempt "
        "is 0 and it gets the liveness checks of any up link (default H = 60 s, the first "
        "check 30 s after the adoption). ADOPT began an outage; the link stays up past the "
        "stable period, so its loss starts a new one: close(1, link_lost), then open(2) "
        "as attempt 1 at once. The adopted link is closed exactly once, like an opened "
        "one; shutdown then closes generation 2.",
        dict(DEFAULT),
    )
    v.step(0, adopt(1), "the application's own link: connected, attempt 0")
    v.step(20000, activity(1))
    v.step(25000, lost(1), "up 25 s: stable, a new outage, attempt 1 at once")
    v.step(25100, ok(2))
    v.step(30000, shutdown())
    v.step(30100, close_completed())

    v = Vector(
        "adopt-stale-and-late",
        "adopt names a generation, so the stale rule applies first: in idle, adopt of a "
        "generation other than the current one (1) is stale and the machine stays idle. "
        "Outside idle adopt is never acted on: naming the current generation it is "
        "ignored (connecting, connected, backing_off, failed, closed), naming another one "
        "it is stale. No state, generation or timer changes.",
        plain(liveness_timeout_ms=None),
    )
    v.step(0, adopt(2), "stale: the current generation is 1")
    v.step(0, adopt(0), "stale: generation 0 never exists")
    v.step(0, start())
    v.step(10, adopt(1), "ignored: the machine's own open of generation 1 is in flight")
    v.step(10, adopt(2), "stale")
    v.step(20, ok(1))
    v.step(30, adopt(1), "ignored: generation 1 is up and supervised already")
    v.step(30, adopt(2), "stale")
    v.step(2000, lost(1), "stable: a new outage, generation 2 at once")
    v.step(2010, fail(2), "backing_off; the current generation is 3, not opened yet")
    v.step(2020, adopt(3), "ignored: generation 3 is current but the machine did not open it")
    v.step(2020, adopt(2), "stale")
    v.fire()
    v.step(3020, fail(3, "permanent"), "failed; the current generation is 4")
    v.step(3030, adopt(4), "ignored: failed leaves only by reconnect_now or shutdown")
    v.step(3030, adopt(3), "stale")
    v.step(3040, shutdown())
    v.step(3050, adopt(4), "ignored: closed is terminal")
    v.step(3050, adopt(1), "stale")

    v = Vector(
        "adopt-early-loss",
        "With the default settings, an adopted link lost before the stable period (10 s) "
        "is an early loss in the outage ADOPT began: a failed attempt, but the outage has "
        "made no attempt yet (the adopted link is attempt 0), so immediate_first_retry "
        "opens generation 2 at once as attempt 1. Its early loss is retried at once too "
        "(attempt 2, a token of the retry budget); the failure of attempt 3 backs off "
        "with step 1 of the outage that began at the adoption.",
        dict(DEFAULT),
    )
    v.step(0, adopt(1))
    v.step(500, lost(1), "up 500 ms: an early loss; the first attempt at once")
    v.step(600, ok(2))
    v.step(1000, lost(2), "up 400 ms: an early loss, within the retry budget")
    v.step(1100, fail(3), "a failed attempt backs off: step 1")
    v.fire()
    v.step(v.steps[-1]["at_ms"] + 100, ok(4))


def epochs():
    v = Vector(
        "epochs-continue-from-previous-machine",
        "Epochs (section 11, rule 6): a machine that replaces another whose generation() "
        "was 3 is built with first_generation 4. Late reports about the old machine's "
        "links 1, 2 and 3 are stale in every state: idle, connecting and connected. "
        "The first open names generation 4, and generations continue from there: 5 after "
        "the loss of 4, 6 after the failure of 5.",
        plain(first_generation=4, liveness_timeout_ms=None),
    )
    v.step(0, lost(1), "stale in idle: a late report of the old machine's link")
    v.step(0, resumed(2), "stale in idle")
    v.step(0, lost(3), "stale in idle: the old machine's last link")
    v.step(0, ok(5), "stale in idle: newer")
    v.step(0, start(), "the first open names generation 4")
    v.step(10, fail(1), "stale in connecting")
    v.step(10, lost(2), "stale in connecting")
    v.step(10, ok(3), "stale in connecting")
    v.step(20, ok(4))
    v.step(30, lost(1), "stale in connected")
    v.step(30, blocked(2), "stale in connected")
    v.step(30, lost(3, "permanent"), "stale in connected, even a permanent loss")
    v.step(2000, lost(4), "stable: close 4, open 5 at once")
    v.step(2010, fail(5), "close 5; generation 6 is next")
    v.fire()
    v.step(3020, ok(6))
    ConfigErrorVector("config-first-generation-zero",
                      "A first_generation of 0 is rejected: generations are positive.",
                      {"first_generation": 0}, "first_generation_out_of_range")
    ConfigErrorVector("config-first-generation-too-large",
                      "A first_generation of 2^52 + 1 (4503599627370497) is rejected: "
                      "generations stay exact as JavaScript numbers.",
                      {"first_generation": 4503599627370497}, "first_generation_out_of_range")
    v = Vector(
        "config-first-generation-max",
        "first_generation 2^52 (4503599627370496), the largest allowed: the machine is "
        "idle on that generation, a report naming 2^52 - 1 is stale, and start opens "
        "generation 4503599627370496 as attempt 1, which connects.",
        {"first_generation": 4503599627370496},
    )
    v.step(0, lost(4503599627370495), "stale: 2^52 - 1")
    v.step(0, start())
    v.step(10, ok(4503599627370496))


def details():
    v = Vector(
        "detail-copied",
        "A detail on attempt_failed or link_lost is copied, untouched, onto the "
        "state_changed whose reason is that input (attempt_failed, link_lost): on a "
        "transient failed attempt, on the loss of a stable link, on a loss while opening "
        "(the largest u32). On a permanent failure that gives up, the state_changed "
        "(reason gave_up) carries none; gave_up carries it, beside its cause and the "
        "outage's attempts. Inputs without a detail add none, and a stale input's detail "
        "goes nowhere.",
        plain(liveness_timeout_ms=None),
    )
    v.step(0, start())
    v.step(10, fail(1, detail=111), "ECONNREFUSED: the state_changed carries 111")
    v.fire("backoff_elapsed: no detail")
    v.step(1020, ok(2))
    v.step(3000, lost(2, detail=104), "ECONNRESET on a stable link: carried, the open not")
    v.step(3010, fail(3, "permanent", detail=403),
           "AMQP ACCESS_REFUSED: gave_up carries 403, its state_changed does not")
    v.step(3020, fail(3, detail=111), "stale: nothing at all")
    v.step(4000, reconnect(), "reconnect_requested: no detail")
    v.step(4010, lost(4, detail=4294967295), "lost while opening: reason link_lost, carried")
    v.fire()
    v.step(5020, fail(5), "no detail in the input: none in the outputs")

    v = Vector(
        "detail-lingering-blocked-endpoints",
        "The detail rule where a failure causes more than one change, or none yet. "
        "With two endpoints, a failed attempt with a detail moves to the round's other "
        "endpoint through a zero wait: only the state_changed with reason attempt_failed "
        "carries the detail, not the backoff_elapsed that follows. With a resume grace, a "
        "stable link's loss with a detail lingers (connected to backing_off, reason "
        "link_lost, detail carried); the close at the end of the grace (reason "
        "backoff_elapsed) carries none. A link lost while blocked carries its detail "
        "onto blocked to backing_off.",
        {"seed": 0, "endpoints": 2, "resume_grace_ms": 3000, "liveness_timeout_ms": None},
    )
    v.step(0, start())
    v.step(10, fail(1, detail=7), "the other endpoint at once: detail on the first change only")
    v.step(20, ok(2))
    v.step(15000, lost(2, detail=8), "stable loss, lingering: detail carried, no close")
    v.fire("the grace ended: close(2, backoff_elapsed), no detail")
    v.step(18010, ok(3))
    v.step(30000, blocked(3))
    v.step(45000, lost(3, detail=9), "lost while blocked: blocked to backing_off carries 9")


def restore_vectors():
    v = Vector(
        "resume-without-session-restores",
        "With resume_grace_ms 5000, a lost stable link lingers. link_resumed(1) with "
        "session_present false is accepted like any resume, and restore(1) follows its "
        "state_changed: the driver must restore subscriptions on the resumed link. A "
        "later blip resumed with its session (session_present omitted: true) emits no "
        "restore. Once the grace of a third loss has ended (close(1, backoff_elapsed), "
        "open(2)), a link_resumed(1) without a session is stale and emits nothing, and "
        "one naming generation 2, which is opening, is ignored.",
        {"seed": 42, "resume_grace_ms": 5000, "liveness_timeout_ms": None},
    )
    v.step(0, start())
    v.step(10, ok(1))
    v.step(20000, lost(1), "stable: a new outage; link 1 lingers for the grace")
    v.step(20100, resumed(1, session_present=False), "resumed, but the broker kept no session")
    v.step(40000, lost(1), "stable again: a new outage; lingers")
    v.step(40050, resumed(1), "resumed with its session: no restore")
    v.step(60000, lost(1), "stable again: lingers")
    v.fire("the grace is over: close 1, open 2")
    v.step(65010, resumed(1, session_present=False), "stale: nothing to restore")
    v.step(65010, resumed(2, session_present=False), "ignored: generation 2 was never lost")
    v.step(65020, ok(2))


def connect_timeout_off():
    v = Vector(
        "connect-timeout-off",
        "connect_timeout_ms null: connecting has no deadline, so no timer (timeout_ms "
        "null) and a timeout input, however late, is ignored there; the transport's own "
        "timeouts decide. The other timers run as usual: the backoff wait after a failed "
        "attempt, and the liveness checks of the link that an hour-long attempt finally "
        "brings up.",
        {"seed": 42, "connect_timeout_ms": None},
    )
    v.step(0, start(), "no connect deadline")
    v.step(100, fail(1))
    v.fire("attempt 2, again without a deadline")
    v.step(3600000, timeout(), "ignored: nothing is due in connecting")
    v.step(3600010, ok(2))


def max_attempts_one():
    v = Vector(
        "max-attempts-one-no-retries",
        "max_attempts 1: no retries. The first attempt's failure gives up at once: "
        "close(1, attempt_failed), connecting -> failed (gave_up), gave_up "
        "retries_exhausted after 1 attempt. reconnect_now starts a new outage, whose "
        "attempt 1 connects; that link's stable loss starts another outage, whose "
        "attempt 1 runs at once, and its failure gives up again.",
        {"seed": 42, "max_attempts": 1},
    )
    v.step(0, start())
    v.step(100, fail(1), "the first failure gives up")
    v.step(1000, reconnect(), "a new outage: attempt 1")
    v.step(1010, ok(2))
    v.step(30000, lost(2), "stable: a new outage, attempt 1 at once")
    v.step(30100, fail(3), "gives up: 1 attempt in this outage")


def ordering():
    v = Vector(
        "ordering-resume-before-loss",
        "The contrast with s05 (same configuration): the SDK's resume callback for link 1 "
        "reaches the machine before its interrupt callback. link_resumed(1) in connected "
        "is ignored (the link was not lost), then link_lost(1) makes the link linger; "
        "with no resume to follow, the grace ends: close(1, backoff_elapsed) and open(2). "
        "The link is replaced although the transport had restored it: a driver must feed "
        "one link's loss and resume in the order they happened (section 15.1).",
        {"seed": 5, "resume_grace_ms": 5000},
    )
    v.step(0, start())
    v.step(100, ok(1))
    v.step(15000, resumed(1), "Resumed(1) first: ignored, the link is up")
    v.step(15001, lost(1), "Interrupted(1): lingers for the grace")
    v.fire("the grace is over: close 1, open 2")
    v.step(20100, ok(2))


def check_trace(v):
    """The trace invariants the Rust runner checks (tests/engine/vectors.rs,
    `Links::check`; the rules are in README.md), applied to a generated vector."""
    last = v.m.c["first_generation"] - 1  # the last generation opened or adopted
    live = None  # the generation of the open link, if any
    before = "idle"
    for i, s in enumerate(v.steps, 1):
        where = f"{v.name}: step {i} (at_ms {s['at_ms']})"
        inp = s["input"]
        acts = inp is not None and s["effect"] == "handled"
        if before == "closed":
            assert not acts and not s["outputs"], f"{where}: an input acted in closed"
        if before == "failed" and (inp or {}).get("type") not in ("reconnect_now", "shutdown"):
            assert not acts and not s["outputs"], f"{where}: an input acted in failed"
        for o in s["outputs"]:
            g = o.get("generation")
            if o["type"] == "open" or (o["type"] == "state_changed" and o["reason"] == "adopted"):
                assert live is None, f"{where}: {o} while {live} is not closed"
                assert g == last + 1, f"{where}: {o} after generation {last}"
                last = live = g
            elif o["type"] == "close":
                assert live == g, f"{where}: close of {g}, which is not open"
                live = None
        before = s["state"]["kind"]


def main():
    for f in [
        row_idle, row_idle_shutdown, row_connecting, row_connected, row_blocked,
        row_backing_off, row_backing_off_lingering, row_closing, row_closing_timeout,
        row_closed, row_failed,
        s01, s02, s03, s04, s05, s06, s07, s08, s09, s10, s11, s12, s13, s14, s16, s17,
        s19, s19_lingering, s20, s23, s23_modes, s23_outages, s23_invalid, s29, s34, s35,
        s38, s38_retries, s38_link, s40, s40_budget, s41, s43, branches, budget_rules,
        budget_config_errors, row_backing_off_probing, s44, probe_rules,
        endpoints_shuffle, endpoints_failover, endpoints_early_loss, endpoints_probe_round,
        endpoints_lingering, endpoints_reconnect, endpoints_max_elapsed, endpoints_stale,
        endpoints_config,
        adoption, epochs, details, restore_vectors, connect_timeout_off, max_attempts_one,
        ordering, poll_clamp,
    ]:
        f()
    for v in VECTORS:
        if isinstance(v, Vector):
            check_trace(v)
    names = [v.name for v in VECTORS]
    assert len(names) == len(set(names)), "duplicate vector names"
    check = "--check" in sys.argv
    stale = []
    for v in VECTORS:
        path = HERE / f"{v.name}.json"
        text = v.to_json()
        json.loads(text)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if check:
        known = {f"{n}.json" for n in names}
        extra = sorted(p.name for p in HERE.glob("*.json") if p.name not in known)
        if extra:
            print("hand-written (not checked here):", extra)
        if stale:
            print("out of date:", stale)
            sys.exit(1)
    print(f"{len(VECTORS)} vectors, {sum(len(getattr(v, 'steps', [])) for v in VECTORS)} steps")


if __name__ == "__main__":
    main()
