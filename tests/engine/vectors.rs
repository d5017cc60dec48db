//! Replays every conformance vector of the machine (every `*.json` directly
//! under `docs/vectors/`) against the real machine. Adding a vector needs no
//! code.
//!
//! The format is described in `docs/spec.md`, "Conformance vectors". For each
//! step the runner calls `handle(now, input)` (none when the input is `null`),
//! drains `poll(now)` until it returns `None` (unless the step says
//! `"drain": false`), then compares the outputs, the effect (handled, ignored,
//! stale), the state (kind, generation, attempt) and `poll_timeout()` with the
//! expected values. `now` is `base + at_ms`, where `base` is one `Instant`
//! taken per vector.
//!
//! Run with `cargo test --all-features --test engine vectors::conformance_vectors -- --nocapture` to see
//! the count line.
#![cfg(feature = "serde")]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redial::backoff::{Backoff, Jitter};
use redial::machine::{
    Config, ConfigBuilder, ConfigError, Generation, Input, Machine, MachineStats, Output, Reason,
    RetryBudget, StateKind,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One vector file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    #[serde(default)]
    scenario: Option<String>,
    /// Rows of the transition table this vector walks (documentation).
    #[serde(default)]
    rows: Vec<StateKind>,
    description: String,
    #[serde(default)]
    config: Map<String, Value>,
    /// When present, building the config must fail with this error (and
    /// `steps` must be empty).
    #[serde(default)]
    config_error: Option<String>,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    at_ms: u64,
    /// `null`: no `handle`, the step only drains `poll(now)`.
    #[serde(deserialize_with = "Option::deserialize")]
    input: Option<Input>,
    /// `false`: no `poll(now)` after `handle` (and `outputs` is empty).
    #[serde(default = "yes")]
    drain: bool,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    effect: Option<Effect>,
    outputs: Vec<Output>,
    state: Observed,
    // `deserialize_with` makes the key mandatory while still accepting `null`.
    #[serde(deserialize_with = "Option::deserialize")]
    timeout_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Observed {
    kind: StateKind,
    generation: u64,
    attempt: u32,
    /// Given only with more than one endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Effect {
    Handled,
    Ignored,
    Stale,
}

/// What the runner saw after one step.
struct Actual {
    effect: Effect,
    outputs: Vec<Output>,
    state: Observed,
    timeout_ms: Option<u64>,
}

/// Which (state before, input, stale?) cells of the transition table the
/// vectors exercised.
type Cells = BTreeSet<(StateKind, &'static str, bool)>;

const INPUTS: [&str; 14] = [
    "start",
    "adopt",
    "attempt_succeeded",
    "attempt_failed",
    "link_lost",
    "link_resumed",
    "activity",
    "blocked",
    "unblocked",
    "reconnect_now",
    "shutdown",
    "close_completed",
    "timeout",
    "probed",
];

#[test]
fn conformance_vectors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/vectors");
    let mut files = Vec::new();
    collect_json(&dir, &mut files);
    files.sort();

    let mut failures = Vec::new();
    let mut cells = Cells::new();
    let mut vectors = 0usize;
    let mut steps = 0usize;
    for file in &files {
        let shown = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(file)
            .display()
            .to_string();
        match run_file(file, &mut cells) {
            Ok(n) => {
                vectors += 1;
                steps += n;
            }
            Err(message) => failures.push(format!("{shown}: {message}")),
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} vector files failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
    println!("ran {vectors} vectors ({steps} steps)");
    assert!(
        vectors >= files.len(),
        "ran {vectors} vectors but found {} files",
        files.len()
    );
    assert!(
        vectors > 30,
        "only {vectors} vectors under {}",
        dir.display()
    );

    // Every cell of the transition table is exercised: each input in each
    // state naming the current generation (or none), and each input that
    // names a generation also with a stale one.
    let mut missing = Vec::new();
    for &kind in StateKind::ALL {
        for input in INPUTS {
            let carries_generation = !matches!(
                input,
                "start" | "reconnect_now" | "shutdown" | "close_completed" | "timeout"
            );
            for stale in [false, true] {
                // A probe's answer is current only in backing_off (its probe
                // unanswered); everywhere else it is stale.
                let probe_current_elsewhere =
                    input == "probed" && !stale && kind != StateKind::BackingOff;
                if (stale && !carries_generation)
                    || probe_current_elsewhere
                    || cells.contains(&(kind, input, stale))
                {
                    continue;
                }
                missing.push(format!(
                    "{kind} x {input}{}",
                    if stale { " (stale)" } else { "" }
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "no vector exercises these cells of the transition table:\n  {}",
        missing.join("\n  ")
    );
    println!("covered {} cells of the transition table", cells.len());
}

/// The machine's vectors: the `*.json` files directly under `docs/vectors/`.
/// Subdirectories hold other families with their own format and runner (the
/// outbox's `delivery/`, replayed by `tests/engine/delivery_vectors.rs`).
fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_file() && path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

/// Runs one file; returns its number of steps.
fn run_file(path: &Path, cells: &mut Cells) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let vector: Vector =
        serde_json::from_str(&text).map_err(|e| format!("not a valid vector: {e}"))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if vector.name != stem {
        return Err(format!(
            "name {:?} differs from the file name {stem:?}",
            vector.name
        ));
    }
    if vector.description.trim().is_empty() {
        return Err("empty description".into());
    }
    if let Some(s) = &vector.scenario {
        let ok = s.len() == 3 && s.starts_with('S') && s[1..].bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return Err(format!("scenario {s:?} is not an id like S05"));
        }
    }

    let built = build_config(&vector.config)?;
    let config = match (built, &vector.config_error) {
        (Ok(_), Some(expected)) => {
            return Err(format!(
                "the config was accepted, expected config_error {expected:?}"
            ));
        }
        (Err(e), Some(expected)) => {
            let got = error_name(&e);
            if got != expected {
                return Err(format!(
                    "config_error: expected {expected:?}, got {got:?} ({e})"
                ));
            }
            if !vector.steps.is_empty() {
                return Err("a vector with config_error must have no steps".into());
            }
            return Ok(0);
        }
        (Err(e), None) => return Err(format!("the config was rejected: {e} ({})", error_name(&e))),
        (Ok(config), None) => config,
    };
    if vector.steps.is_empty() {
        return Err("no steps".into());
    }

    let base = Instant::now();
    let mut links = Links {
        last_opened: config.first_generation().0 - 1,
        open: None,
    };
    let mut machine = Machine::new(config);
    let mut visited = BTreeSet::new();
    for (index, step) in vector.steps.iter().enumerate() {
        if !step.drain && (step.input.is_none() || !step.outputs.is_empty()) {
            return Err(format!(
                "step {} (at_ms {}): a step with \"drain\": false needs an input and \
                 \"outputs\": []",
                index + 1,
                step.at_ms
            ));
        }
        if step.drain && step.timeout_ms.is_some_and(|t| t <= step.at_ms) {
            return Err(format!(
                "step {} (at_ms {}): timeout_ms {:?} is not after at_ms; vectors must not \
                 leave a timer due (feed {{\"type\":\"timeout\"}} at the due time instead)",
                index + 1,
                step.at_ms,
                step.timeout_ms
            ));
        }
        let before = observe_state(&machine);
        visited.insert(before.kind);
        let actual = run_step(&mut machine, base, step);
        if let Some(input) = &step.input {
            cells.insert((
                before.kind,
                input_name(input),
                actual.effect == Effect::Stale,
            ));
        }
        let mut mismatch = compare(step, &actual);
        if mismatch.is_empty()
            && let Err(broken) = links.check(before.kind, step.input.as_ref(), &actual)
        {
            mismatch = format!("  invariant broken: {broken}\n");
        }
        if !mismatch.is_empty() {
            return Err(format!(
                "step {} of {} (at_ms {}, input {}{}):\n{mismatch}",
                index + 1,
                vector.steps.len(),
                step.at_ms,
                json(&step.input),
                step.note
                    .as_deref()
                    .map(|n| format!(", note: {n}"))
                    .unwrap_or_default(),
            ));
        }
    }
    if let Some(row) = vector.rows.iter().find(|row| !visited.contains(row)) {
        return Err(format!("lists row {row} but no step is fed in that state"));
    }
    Ok(vector.steps.len())
}

/// The invariants of docs/spec.md (section 16) that can be read off the
/// output stream of one vector (docs/vectors/README.md states the rules):
/// the n-th link (opened, or adopted as the first) names generation
/// `first_generation + n - 1` (`generations_increase`); a link is opened only
/// when the previous one was closed, and each is closed exactly once, after
/// its open (`single_link`, `open_close_alternate`); nothing happens in
/// `closed`, and only `reconnect_now` and `shutdown` act in `failed`
/// (`sticky_terminal`). A step with no input acts only through its outputs.
struct Links {
    last_opened: u64,
    open: Option<u64>,
}

impl Links {
    fn check(
        &mut self,
        before: StateKind,
        input: Option<&Input>,
        actual: &Actual,
    ) -> Result<(), String> {
        let acts = input.is_some() && actual.effect == Effect::Handled;
        match before {
            StateKind::Closed if acts || !actual.outputs.is_empty() => {
                return Err("an input acted in closed".into());
            }
            StateKind::Failed
                if (acts || !actual.outputs.is_empty())
                    && !matches!(input, Some(Input::ReconnectNow | Input::Shutdown)) =>
            {
                return Err("an input other than reconnect_now or shutdown acted in failed".into());
            }
            _ => {}
        }
        for output in &actual.outputs {
            match *output {
                Output::StateChanged {
                    reason: Reason::Adopted,
                    generation,
                    ..
                } => {
                    if self.open.is_some() || generation.0 != self.last_opened + 1 {
                        return Err(format!("adopted {generation} out of turn"));
                    }
                    self.last_opened = generation.0;
                    self.open = Some(generation.0);
                }
                Output::Open { generation, .. } => {
                    if let Some(open) = self.open {
                        return Err(format!("open of {generation} while {open} is not closed"));
                    }
                    if generation.0 != self.last_opened + 1 {
                        return Err(format!(
                            "open of generation {generation} after generation {}",
                            self.last_opened
                        ));
                    }
                    self.last_opened = generation.0;
                    self.open = Some(generation.0);
                }
                Output::Close { generation, .. } => {
                    if self.open != Some(generation.0) {
                        return Err(format!("close of {generation}, which is not open"));
                    }
                    self.open = None;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn run_step(machine: &mut Machine, base: Instant, step: &Step) -> Actual {
    let now = base + Duration::from_millis(step.at_ms);
    let before = machine.stats();
    if let Some(input) = step.input {
        machine.handle(now, input);
    }
    let mut outputs = Vec::new();
    while step.drain
        && let Some(output) = machine.poll(now)
    {
        outputs.push(output);
        assert!(outputs.len() < 10_000, "poll never returned None");
    }
    Actual {
        effect: effect(before, machine.stats()),
        outputs,
        state: observe_state(machine),
        timeout_ms: machine.poll_timeout().map(|t| {
            u64::try_from(t.saturating_duration_since(base).as_millis())
                .expect("timeout fits in u64 ms")
        }),
    }
}

fn observe_state(machine: &Machine) -> Observed {
    Observed {
        kind: machine.kind(),
        generation: machine.generation().0,
        attempt: machine.state().attempt(),
        endpoint: (machine.config().endpoints() > 1).then(|| machine.endpoint()),
    }
}

fn effect(before: MachineStats, after: MachineStats) -> Effect {
    if after.stale_inputs > before.stale_inputs {
        Effect::Stale
    } else if after.ignored_inputs > before.ignored_inputs {
        Effect::Ignored
    } else {
        Effect::Handled
    }
}

/// A readable diff, or an empty string when everything matches.
fn compare(step: &Step, actual: &Actual) -> String {
    let mut out = String::new();
    if step.outputs != actual.outputs {
        out.push_str("  outputs differ:\n    expected:\n");
        for o in &step.outputs {
            let _ = writeln!(out, "      {}", json(o));
        }
        if step.outputs.is_empty() {
            out.push_str("      (none)\n");
        }
        out.push_str("    actual:\n");
        for o in &actual.outputs {
            let _ = writeln!(out, "      {}", json(o));
        }
        if actual.outputs.is_empty() {
            out.push_str("      (none)\n");
        }
    }
    if let Some(expected) = step.effect
        && expected != actual.effect
    {
        let _ = writeln!(
            out,
            "  effect: expected {}, actual {}",
            json(&expected),
            json(&actual.effect)
        );
    }
    if step.state != actual.state {
        let _ = writeln!(
            out,
            "  state: expected {}, actual {}",
            json(&step.state),
            json(&actual.state)
        );
    }
    if step.timeout_ms != actual.timeout_ms {
        let _ = writeln!(
            out,
            "  timeout_ms: expected {}, actual {}",
            json(&step.timeout_ms),
            json(&actual.timeout_ms)
        );
    }
    out
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialisable")
}

fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Start => "start",
        Input::Adopt { .. } => "adopt",
        Input::AttemptSucceeded { .. } => "attempt_succeeded",
        Input::AttemptFailed { .. } => "attempt_failed",
        Input::LinkLost { .. } => "link_lost",
        Input::LinkResumed { .. } => "link_resumed",
        Input::Activity { .. } => "activity",
        Input::Blocked { .. } => "blocked",
        Input::Unblocked { .. } => "unblocked",
        Input::ReconnectNow => "reconnect_now",
        Input::Shutdown => "shutdown",
        Input::CloseCompleted => "close_completed",
        Input::Timeout => "timeout",
        Input::Probed { .. } => "probed",
        _ => panic!("an input the vectors do not know: {input:?}"),
    }
}

fn error_name(error: &ConfigError) -> &'static str {
    match error {
        ConfigError::Zero { .. } => "zero",
        ConfigError::TooLarge { .. } => "too_large",
        ConfigError::MultiplierBelowOne { .. } => "multiplier_below_one",
        ConfigError::CapBelowInitial { .. } => "cap_below_initial",
        ConfigError::JitterOutOfRange { .. } => "jitter_out_of_range",
        ConfigError::ZeroAttempts => "zero_attempts",
        ConfigError::BlockedTimeoutTooShort { .. } => "blocked_timeout_too_short",
        ConfigError::EndpointsOutOfRange { .. } => "endpoints_out_of_range",
        ConfigError::FirstGenerationOutOfRange { .. } => "first_generation_out_of_range",
        _ => "unknown",
    }
}

// ---- the config object ----------------------------------------------------------

/// Builds the machine's config from a vector's `config` object. Omitted keys
/// take the documented defaults, except `seed`, which defaults to 0 (the
/// builder would pick a random one). `null` means "none" for the optional
/// settings. An `Err(String)` is a malformed vector; `Ok(Err(_))` a config the
/// machine rejects.
fn build_config(map: &Map<String, Value>) -> Result<Result<Config, ConfigError>, String> {
    let mut builder = Config::builder().seed(0);
    for (key, value) in map {
        builder = match key.as_str() {
            "seed" => builder.seed(uint(key, value)?),
            "backoff" => match build_backoff(value)? {
                Ok(backoff) => builder.backoff(backoff),
                Err(e) => return Ok(Err(e)),
            },
            "immediate_first_retry" => {
                builder.immediate_first_retry(value.as_bool().ok_or_else(|| bad(key, value))?)
            }
            "retry_budget" => builder.opt(
                opt(key, value, retry_budget)?,
                ConfigBuilder::retry_budget,
                ConfigBuilder::no_retry_budget,
            ),
            "max_attempts" => builder.opt(
                opt(key, value, small)?,
                ConfigBuilder::max_attempts,
                ConfigBuilder::no_max_attempts,
            ),
            "max_elapsed_ms" => builder.opt(
                opt(key, value, millis)?,
                ConfigBuilder::max_elapsed,
                ConfigBuilder::no_max_elapsed,
            ),
            "stable_period_ms" => builder.stable_period(millis(key, value)?),
            "connect_timeout_ms" => match opt(key, value, millis)? {
                Some(timeout) => builder.connect_timeout(timeout),
                None => builder.no_connect_timeout(),
            },
            "first_generation" => builder.first_generation(Generation(uint(key, value)?)),
            "liveness_timeout_ms" => builder.opt(
                opt(key, value, millis)?,
                ConfigBuilder::liveness_timeout,
                ConfigBuilder::no_liveness_timeout,
            ),
            "blocked_timeout_ms" => builder.opt(
                opt(key, value, millis)?,
                ConfigBuilder::blocked_timeout,
                ConfigBuilder::no_blocked_timeout,
            ),
            "close_timeout_ms" => builder.close_timeout(millis(key, value)?),
            "resume_grace_ms" => builder.opt(
                opt(key, value, millis)?,
                ConfigBuilder::resume_grace,
                ConfigBuilder::no_resume_grace,
            ),
            "permanent_retries" => builder.permanent_retries(small(key, value)?),
            "probe_interval_ms" => builder.opt(
                opt(key, value, millis)?,
                ConfigBuilder::probe_interval,
                ConfigBuilder::no_probe_interval,
            ),
            "endpoints" => {
                builder.endpoints(usize::try_from(uint(key, value)?).map_err(|_| bad(key, value))?)
            }
            other => return Err(format!("unknown config key {other:?}")),
        };
    }
    Ok(builder.build())
}

/// Sets an optional setting through its plain setter or its `no_*` one.
trait SetOpt: Sized {
    fn opt<T>(self, value: Option<T>, set: fn(Self, T) -> Self, unset: fn(Self) -> Self) -> Self {
        match value {
            Some(v) => set(self, v),
            None => unset(self),
        }
    }
}

impl SetOpt for ConfigBuilder {}

fn retry_budget(key: &str, value: &Value) -> Result<RetryBudget, String> {
    let map = value.as_object().ok_or_else(|| bad(key, value))?;
    if map.len() != 2 {
        return Err(bad(key, value));
    }
    let field = |name: &str| map.get(name).ok_or_else(|| bad(key, value));
    Ok(RetryBudget {
        burst: small(key, field("burst")?)?,
        refill: millis(key, field("refill_ms")?)?,
    })
}

fn build_backoff(value: &Value) -> Result<Result<Backoff, ConfigError>, String> {
    let map = value.as_object().ok_or_else(|| bad("backoff", value))?;
    let defaults = Backoff::default();
    let (mut initial, mut multiplier, mut max, mut jitter) = (
        defaults.initial(),
        defaults.multiplier(),
        defaults.max(),
        defaults.jitter(),
    );
    for (key, value) in map {
        match key.as_str() {
            "initial_ms" => initial = millis(key, value)?,
            "multiplier" => multiplier = value.as_f64().ok_or_else(|| bad(key, value))?,
            "max_ms" => max = millis(key, value)?,
            "jitter" => {
                jitter = serde_json::from_value::<Jitter>(value.clone())
                    .map_err(|e| format!("backoff.jitter {value}: {e}"))?;
            }
            other => return Err(format!("unknown backoff key {other:?}")),
        }
    }
    Ok(Backoff::builder()
        .initial(initial)
        .multiplier(multiplier)
        .max(max)
        .jitter(jitter)
        .build())
}

fn bad(key: &str, value: &Value) -> String {
    format!("config key {key:?} has an invalid value {value}")
}

fn uint(key: &str, value: &Value) -> Result<u64, String> {
    value.as_u64().ok_or_else(|| bad(key, value))
}

fn small(key: &str, value: &Value) -> Result<u32, String> {
    u32::try_from(uint(key, value)?).map_err(|_| bad(key, value))
}

fn millis(key: &str, value: &Value) -> Result<Duration, String> {
    uint(key, value).map(Duration::from_millis)
}

fn opt<T>(
    key: &str,
    value: &Value,
    parse: fn(&str, &Value) -> Result<T, String>,
) -> Result<Option<T>, String> {
    if value.is_null() {
        Ok(None)
    } else {
        parse(key, value).map(Some)
    }
}
