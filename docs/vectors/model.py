"""A reference model of the redial reconnect machine, written from docs/spec.md.

This is a second, independent implementation of the specification (a "port"
in Python). `generate.py` uses it to compute the expected outputs of every
conformance vector; `cargo test --all-features --test engine vectors::conformance_vectors` then checks
the committed JSON against the real Rust machine. When the two disagree, one
of them (or the spec) is wrong.

All times are integer milliseconds. Section numbers refer to docs/spec.md.
"""

MASK = (1 << 64) - 1
MAX_DELAY_MS = 1 << 30
MAX_ENDPOINTS = 1024
MAX_FIRST_GENERATION = 1 << 52  # a JavaScript number holds it exactly (section 6)
SHUFFLE_SALT = 0x656E64706F696E74  # "endpoint" in ASCII (section 12.1)

DEFAULT_BACKOFF = {
    "initial_ms": 1000,
    "multiplier": 2.0,
    "max_ms": 60000,
    "jitter": {"mode": "proportional", "fraction": 0.5},
}

DEFAULTS = {
    "seed": 0,
    "immediate_first_retry": True,
    "retry_budget": {"burst": 3, "refill_ms": 2000},
    "max_attempts": None,
    "max_elapsed_ms": None,
    "stable_period_ms": 10000,
    "connect_timeout_ms": 20000,
    "liveness_timeout_ms": 60000,
    "blocked_timeout_ms": None,
    "close_timeout_ms": 5000,
    "resume_grace_ms": None,
    "permanent_retries": 0,
    "endpoints": 1,
    "first_generation": 1,
    "probe_interval_ms": None,
}


class ConfigError(Exception):
    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


def full_config(cfg):
    """Fills in the defaults and validates (spec section "Configuration")."""
    out = dict(DEFAULTS)
    for k, v in cfg.items():
        if k == "backoff":
            continue
        if k not in DEFAULTS:
            raise KeyError(k)
        out[k] = v
    b = dict(DEFAULT_BACKOFF)
    b.update(cfg.get("backoff", {}))
    out["backoff"] = b
    # backoff
    if b["initial_ms"] < 1 or b["max_ms"] < 1:
        raise ConfigError("zero")
    if b["initial_ms"] > MAX_DELAY_MS or b["max_ms"] > MAX_DELAY_MS:
        raise ConfigError("too_large")
    m = b["multiplier"]
    if m != m or m < 1.0 or m == float("inf"):
        raise ConfigError("multiplier_below_one")
    if b["max_ms"] < b["initial_ms"]:
        raise ConfigError("cap_below_initial")
    j = b["jitter"]
    if j["mode"] == "proportional" and not (0.0 <= j["fraction"] <= 1.0):
        raise ConfigError("jitter_out_of_range")
    # durations, in the order the builder checks them
    for k in ("stable_period_ms", "close_timeout_ms"):
        check_ms(out[k])
    if out["connect_timeout_ms"] is not None:  # null: no connect timer (section 6)
        check_ms(out["connect_timeout_ms"])
    if out["max_elapsed_ms"] is not None:
        check_ms(out["max_elapsed_ms"])
    h = out["liveness_timeout_ms"]
    if h is not None:
        check_ms(h)
        if h < 2:
            raise ConfigError("zero")
    bt = out["blocked_timeout_ms"]
    if bt is not None:
        check_ms(bt)
        if h is not None and bt < 2 * h:
            raise ConfigError("blocked_timeout_too_short")
    if out["resume_grace_ms"] is not None:
        check_ms(out["resume_grace_ms"])
    if out["probe_interval_ms"] is not None:
        check_ms(out["probe_interval_ms"])
    if out["max_attempts"] == 0:
        raise ConfigError("zero_attempts")
    if not (1 <= out["endpoints"] <= MAX_ENDPOINTS):
        raise ConfigError("endpoints_out_of_range")
    if not (1 <= out["first_generation"] <= MAX_FIRST_GENERATION):
        raise ConfigError("first_generation_out_of_range")
    rb = out["retry_budget"]
    if rb is not None:
        if set(rb) != {"burst", "refill_ms"}:
            raise KeyError("retry_budget")
        if rb["burst"] < 1:
            raise ConfigError("zero")
        check_ms(rb["refill_ms"])
    return out


def check_ms(v):
    if v < 1:
        raise ConfigError("zero")
    if v > MAX_DELAY_MS:
        raise ConfigError("too_large")


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform_inclusive(self, lo, hi):
        if hi <= lo:
            return lo  # no draw
        r = self.next_u64()
        n = hi - lo + 1
        if n > MASK:
            return r
        return lo + r % n


def shuffle(endpoints, seed):
    """SHUFFLE of section 12.1: Fisher-Yates with its own SplitMix64."""
    order = list(range(endpoints))
    r = SplitMix64(seed ^ SHUFFLE_SALT)
    for i in range(endpoints - 1, 0, -1):
        j = r.uniform_inclusive(0, i)
        order[i], order[j] = order[j], order[i]
    return order


# The reference of section 12.1 (a self-check of the port).
assert shuffle(3, 0) == [0, 2, 1], shuffle(3, 0)
assert shuffle(3, 3) == [1, 2, 0], shuffle(3, 3)
assert shuffle(3, 5) == [1, 0, 2], shuffle(3, 5)
assert shuffle(1, 0) == [0]


class Backoff:
    """Spec section "Backoff"."""

    def __init__(self, policy, seed):
        self.p = policy
        self.rng = SplitMix64(seed)
        self.reset()

    def reset(self):
        self.step = 0
        self.base = self.p["initial_ms"]
        self.prev = self.p["initial_ms"]

    def grow(self, base):
        product = float(base) * float(self.p["multiplier"])
        cap = self.p["max_ms"]
        return cap if product >= cap else int(product)  # floor: product >= 0

    def next_delay(self):
        self.step += 1
        if self.step > 1:
            self.base = self.grow(self.base)
        base, cap = self.base, self.p["max_ms"]
        j = self.p["jitter"]
        mode = j["mode"]
        if mode == "none":
            d = base
        elif mode == "full":
            d = self.rng.uniform_inclusive(0, base)
        elif mode == "equal":
            half = base // 2
            d = half + self.rng.uniform_inclusive(0, base - half)
        elif mode == "decorrelated":
            lo = self.p["initial_ms"]
            hi = max(self.prev * 3, lo)
            d = min(self.rng.uniform_inclusive(lo, hi), cap)
            self.prev = d
        elif mode == "proportional":
            spread = int(float(base) * float(j["fraction"]))
            d = min(self.rng.uniform_inclusive(base - min(spread, base), base + spread), cap)
        else:
            raise ValueError(mode)
        return min(d, cap)


GEN_INPUTS = {
    "adopt",
    "attempt_succeeded",
    "attempt_failed",
    "link_lost",
    "link_resumed",
    "activity",
    "blocked",
    "unblocked",
}


class Machine:
    def __init__(self, cfg):
        self.c = full_config(cfg)
        self.state = {"kind": "idle"}
        self.gen = self.c["first_generation"]  # the epoch (section 11, rule 6)
        self.outage = None  # {"started", "attempts", "permanent"}
        self.backoff = Backoff(self.c["backoff"], self.c["seed"])
        self.order = shuffle(self.c["endpoints"], self.c["seed"])
        self.cursor = 0
        self.untried = self.c["endpoints"]
        self.retry_tokens = None  # (tokens, since); None: never spent, full
        self.next_probe = 1
        self.probes_unsupported = False
        self.out = []
        self.now = None
        self.detail = None  # the detail of the input being handled (sections 3, 9)
        self.stats = dict(
            stale_inputs=0, ignored_inputs=0, opens=0, closes=0, failed_attempts=0, outages=0,
            probes=0, resumes=0, adoptions=0,
        )

    # -- observers ---------------------------------------------------------
    def kind(self):
        return self.state["kind"]

    def endpoint(self):
        """order[cursor]: the live link's endpoint, or the next try's."""
        return self.order[self.cursor]

    def state_attempt(self):
        s = self.state
        if s["kind"] in ("connecting", "backing_off"):
            return s["attempt"]
        if s["kind"] in ("connected", "blocked"):
            return s["link"]["attempt"]
        return 0

    def poll_timeout(self):
        s = self.state
        k = s["kind"]
        if k in ("connecting", "closing"):
            return s["deadline"]
        if k == "connected":
            lv = s["link"]["liveness"]
            return lv["next_check"] if lv else None
        if k == "blocked":
            lv = s["link"]["liveness"]
            cands = [x for x in (lv["next_check"] if lv else None, s["deadline"]) if x is not None]
            return min(cands) if cands else None
        if k == "backing_off":
            return s["until"]
        return None

    def live_link(self):
        s = self.state
        if s["kind"] == "connecting":
            return s["generation"]
        if s["kind"] in ("connected", "blocked"):
            return s["link"]["generation"]
        if s["kind"] == "backing_off":
            return s["lingering"]
        return None

    # -- the contract --------------------------------------------------------
    def handle(self, now, inp):
        now = now if self.now is None else max(self.now, now)
        self.now = now
        t = inp["type"]
        if t in GEN_INPUTS and inp["generation"] != self.gen:
            self.stats["stale_inputs"] += 1
            return
        # Section 8: an answer to any probe but the unanswered one is stale.
        if t == "probed" and inp["probe"] != self.state.get("probe"):
            self.stats["stale_inputs"] += 1
            return
        # Only attempt_failed and link_lost carry one (section 4).
        self.detail = inp.get("detail")
        handled = getattr(self, "on_" + t)(now, inp)
        if not handled:
            self.stats["ignored_inputs"] += 1

    def poll(self, now):
        """Section 2: with the queue empty and a timer due at the *clamped* now
        (an earlier `now` than the clock reading compares as the reading), first
        handle(now, timeout); then the oldest queued output, or None."""
        clamped = now if self.now is None else max(self.now, now)
        due = self.poll_timeout()
        if not self.out and due is not None and due <= clamped:
            self.handle(now, {"type": "timeout"})
        return self.out.pop(0) if self.out else None

    def drain(self, now):
        """poll(now) until None, as a driver (and a vector's runner) does."""
        out = []
        while (o := self.poll(now)) is not None:
            out.append(o)
        return out

    # -- cells ----------------------------------------------------------------
    def on_start(self, now, inp):
        if self.kind() != "idle":
            return False
        self.new_outage(now)
        self.open(now, "start")
        return True

    def on_adopt(self, now, inp):
        # ADOPT (section 9): only in idle; the application's link is the current
        # generation, attempt 0 (not an attempt), no open.
        if self.kind() != "idle":
            return False
        self.new_outage(now)
        self.stats["adoptions"] += 1
        link = self.new_link(now, self.gen, 0)
        self.set_state({"kind": "connected", "link": link}, "adopted")
        return True

    def on_attempt_succeeded(self, now, inp):
        s = self.state
        if s["kind"] != "connecting":
            return False
        link = self.new_link(now, s["generation"], s["attempt"])
        self.set_state({"kind": "connected", "link": link}, "attempt_succeeded")
        return True

    def on_attempt_failed(self, now, inp, reason="attempt_failed"):
        s = self.state
        if s["kind"] != "connecting":
            return False
        self.stats["failed_attempts"] += 1
        self.retire(s["generation"], reason)
        if inp["kind"] == "permanent" and not self.permanent_retry_allowed():
            self.give_up("permanent")
        else:
            self.schedule(now, reason, None, False, self.advance())
        return True

    def on_link_lost(self, now, inp):
        s = self.state
        if s["kind"] == "connecting":
            return self.on_attempt_failed(now, inp, "link_lost")
        if s["kind"] in ("connected", "blocked"):
            self.link_down(now, s["link"], "link_lost", inp["kind"], True)
            return True
        return False

    def on_link_resumed(self, now, inp):
        s = self.state
        if s["kind"] != "backing_off" or s["lingering"] is None:
            return False
        # The transport's own reconnect counts as an attempt of the outage.
        self.outage["attempts"] += 1
        self.stats["resumes"] += 1
        g = s["lingering"]
        link = self.new_link(now, g, self.outage["attempts"])
        self.set_state({"kind": "connected", "link": link}, "link_resumed")
        # Section 13, *Resumed without a session*: right after the state_changed.
        if not inp.get("session_present", True):
            self.out.append({"type": "restore", "generation": g})
        return True

    def on_activity(self, now, inp):
        s = self.state
        if s["kind"] not in ("connected", "blocked"):
            return False
        if s["link"]["liveness"]:
            s["link"]["liveness"]["seen"] = True
        return True

    def on_blocked(self, now, inp):
        s = self.state
        if s["kind"] != "connected":
            return False
        bt = self.c["blocked_timeout_ms"]
        self.set_state(
            {"kind": "blocked", "link": s["link"], "deadline": None if bt is None else now + bt},
            "blocked",
        )
        return True

    def on_unblocked(self, now, inp):
        s = self.state
        if s["kind"] != "blocked":
            return False
        self.set_state({"kind": "connected", "link": s["link"]}, "unblocked")
        return True

    def on_reconnect_now(self, now, inp):
        s = self.state
        k = s["kind"]
        if k in ("connected", "blocked"):
            self.stats["outages"] += 1
            self.retire(s["link"]["generation"], "reconnect_requested")
            self.new_outage(now)
        elif k == "backing_off":
            if s["lingering"] is not None:
                self.retire(s["lingering"], "reconnect_requested")
        elif k == "failed":
            self.new_outage(now)
        else:
            return False
        self.open(now, "reconnect_requested")
        return True

    def on_shutdown(self, now, inp):
        if self.kind() in ("closing", "closed"):
            return False
        g = self.live_link()
        if g is not None:
            self.retire(g, "shutdown")
            self.set_state(
                {"kind": "closing", "deadline": now + self.c["close_timeout_ms"]}, "shutdown"
            )
        else:
            self.set_state({"kind": "closed"}, "shutdown")
        return True

    def on_close_completed(self, now, inp):
        if self.kind() != "closing":
            return False
        self.set_state({"kind": "closed"}, "close_completed")
        return True

    def on_timeout(self, now, inp):
        due = self.poll_timeout()
        if due is None or due > now:
            return False
        s = self.state
        k = s["kind"]
        if k == "connecting":
            self.on_attempt_failed(now, {"kind": "transient"}, "connect_timeout")
        elif k == "connected":
            if self.liveness_expired(s["link"], now):
                self.out.append({"type": "liveness_lost", "generation": s["link"]["generation"]})
                self.link_down(now, s["link"], "liveness_lost", "transient", False)
        elif k == "blocked":
            if self.liveness_expired(s["link"], now):
                self.out.append({"type": "liveness_lost", "generation": s["link"]["generation"]})
                self.link_down(now, s["link"], "liveness_lost", "transient", False)
            elif s["deadline"] is not None and s["deadline"] <= now:
                self.link_down(now, s["link"], "blocked_too_long", "transient", False)
        elif k == "backing_off":
            if s["lingering"] is None and self.probing():
                if s["probe"] is not None:
                    # An unanswered probe counts as unreachable: a failed try.
                    self.advance()
                self.probe_or_open(now, s["attempt"])
                return True
            if s["lingering"] is not None:
                self.retire(s["lingering"], "backoff_elapsed")
            self.open(now, "backoff_elapsed")
        elif k == "closing":
            self.set_state({"kind": "closed"}, "close_timeout")
        return True

    def on_probed(self, now, inp):
        # Only the unanswered probe of backing_off gets here (section 8).
        s = self.state
        if inp["outcome"] == "unreachable":
            if self.advance():
                # The round's next endpoint, probed at once.
                self.probe_or_open(now, s["attempt"])
            else:
                # The next probe starts when this one's time is up (`until`).
                s["probe"] = None
        else:
            if inp["outcome"] == "unsupported":
                self.probes_unsupported = True
            self.open(now, "backoff_elapsed")
        return True

    # -- procedures -------------------------------------------------------------
    def probing(self):
        return self.c["probe_interval_ms"] is not None and not self.probes_unsupported

    def probe_or_open(self, now, attempt):
        interval = self.c["probe_interval_ms"]
        me = self.c["max_elapsed_ms"]
        if me is not None and (now - self.outage["started"]) + interval > me:
            self.open(now, "backoff_elapsed")
            return
        p = self.next_probe
        self.next_probe += 1
        self.state = {
            "kind": "backing_off",
            "attempt": attempt,
            "until": now + interval,
            "lingering": None,
            "probe": p,
        }
        self.stats["probes"] += 1
        self.out.append(with_endpoint({"type": "probe", "probe": p}, self.endpoint()))

    def new_link(self, now, gen, attempt):
        h = self.c["liveness_timeout_ms"]
        liveness = None if h is None else {"next_check": now + h // 2, "missed": 0, "seen": False}
        return {"generation": gen, "attempt": attempt, "since": now, "liveness": liveness}

    def liveness_expired(self, link, now):
        h = self.c["liveness_timeout_ms"]
        lv = link["liveness"]
        if h is None or lv is None:
            return False
        while lv["next_check"] <= now:
            if lv["seen"]:
                lv["missed"] = 0
                lv["seen"] = False
            else:
                lv["missed"] += 1
            lv["next_check"] += h // 2
            if lv["missed"] >= 2:
                return True
        return False

    def link_down(self, now, link, reason, kind, may_linger):
        self.stats["outages"] += 1
        stable = now - link["since"] >= self.c["stable_period_ms"]
        if stable:
            self.new_outage(now)
        else:
            self.stats["failed_attempts"] += 1
        if kind == "permanent" and not self.permanent_retry_allowed():
            self.retire(link["generation"], reason)
            self.give_up("permanent")
            return
        in_round = False
        if may_linger and self.c["resume_grace_ms"] is not None:
            lingering = link["generation"]  # no close yet, no ADVANCE
        else:
            self.retire(link["generation"], reason)
            lingering = None
            if not stable:
                in_round = self.advance()  # an early loss is a failed try
        self.schedule(now, reason, lingering, True, in_round)

    def take_retry_token(self, now):
        b = self.c["retry_budget"]
        if b is None:
            return False
        if self.retry_tokens is None:
            tokens, since = b["burst"], now
        else:
            tokens, since = self.retry_tokens
            earned = (now - since) // b["refill_ms"]
            if tokens + earned >= b["burst"]:
                tokens, since = b["burst"], now
            else:
                tokens, since = tokens + earned, since + earned * b["refill_ms"]
        self.retry_tokens = (max(tokens - 1, 0), since)
        return tokens > 0

    def advance(self):
        """ADVANCE: the try at the cursor failed. True: go on at once."""
        n = self.c["endpoints"]
        self.cursor = (self.cursor + 1) % n
        self.untried -= 1
        if self.untried > 0:
            return True
        self.untried = n  # the round is over; the next try begins a new one
        return False

    def schedule(self, now, reason, lingering, link_was_up, in_round):
        o = self.outage
        ma = self.c["max_attempts"]
        if ma is not None and o["attempts"] >= ma:
            self.give_up_lingering(lingering, "retries_exhausted", reason)
            return
        me = self.c["max_elapsed_ms"]
        if in_round and lingering is None and (me is None or now - o["started"] <= me):
            # The round's next endpoint, at once.
            if self.kind() == "connecting":
                # A failed attempt: a zero wait, so no connecting -> connecting.
                self.set_state(
                    {
                        "kind": "backing_off",
                        "attempt": o["attempts"] + 1,
                        "until": now,
                        "lingering": None,
                        "probe": None,
                    },
                    reason,
                )
                self.open(now, "backoff_elapsed")
            else:
                self.open(now, reason)  # an up link's early loss
            return
        first = o["attempts"] == 0
        if self.c["immediate_first_retry"] and lingering is None:
            me = self.c["max_elapsed_ms"]
            proven = (
                link_was_up
                and not first
                and (me is None or now - o["started"] <= me)
                and self.take_retry_token(now)
            )
            if first or proven:
                self.open(now, reason)
                return
        if first and self.c["immediate_first_retry"]:
            wait = 0
        else:
            wait = self.backoff.next_delay()
        if lingering is not None:
            wait = max(wait, self.c["resume_grace_ms"])
        me = self.c["max_elapsed_ms"]
        if me is not None and (now - o["started"]) + wait > me:
            if o["attempts"] > 0:
                self.give_up_lingering(lingering, "deadline_exhausted", reason)
                return
            # Every outage gets at least one attempt: cut the wait.
            wait = max(0, me - (now - o["started"]))
        self.set_state(
            {
                "kind": "backing_off",
                "attempt": o["attempts"] + 1,
                "until": now + wait,
                "lingering": lingering,
                "probe": None,
            },
            reason,
        )

    def open(self, now, reason):
        self.outage["attempts"] += 1
        a = self.outage["attempts"]
        g = self.gen
        ct = self.c["connect_timeout_ms"]
        self.set_state(
            {
                "kind": "connecting",
                "generation": g,
                "attempt": a,
                # connect_timeout_ms null: no deadline, no timer (section 15.2)
                "deadline": None if ct is None else now + ct,
            },
            reason,
        )
        self.stats["opens"] += 1
        self.out.append(
            with_endpoint({"type": "open", "generation": g, "attempt": a}, self.endpoint())
        )

    def retire(self, g, reason):
        """RETIRE(n, reason): the close carries the reason of the transition."""
        assert g == self.gen
        self.gen = g + 1
        self.stats["closes"] += 1
        self.out.append({"type": "close", "generation": g, "reason": reason})

    def give_up_lingering(self, lingering, cause, reason):
        if lingering is not None:
            self.retire(lingering, reason)
        self.give_up(cause)

    def give_up(self, cause):
        self.set_state({"kind": "failed", "cause": cause}, "gave_up")
        out = {"type": "gave_up", "cause": cause, "attempts": self.outage["attempts"]}
        # The detail of the input being handled, if it carried one (section 5).
        if self.detail is not None:
            out["detail"] = self.detail
        self.out.append(out)

    def permanent_retry_allowed(self):
        self.outage["permanent"] += 1
        return self.outage["permanent"] <= self.c["permanent_retries"]

    def new_outage(self, now):
        self.outage = {"started": now, "attempts": 0, "permanent": 0}
        self.backoff.reset()
        self.untried = self.c["endpoints"]  # a new round, from the cursor

    def set_state(self, nxt, reason):
        frm = self.kind()
        self.state = nxt
        sc = {
            "type": "state_changed",
            "from": frm,
            "to": nxt["kind"],
            "generation": self.gen,
            "reason": reason,
        }
        # Only a state_changed whose reason is the failure input itself carries
        # its detail (section 5); gave_up carries it instead of its state_changed.
        if reason in ("attempt_failed", "link_lost") and self.detail is not None:
            sc["detail"] = self.detail
        self.out.append(sc)


def with_endpoint(output, endpoint):
    """JSON omits an endpoint of 0 (section 5)."""
    if endpoint != 0:
        output["endpoint"] = endpoint
    return output
