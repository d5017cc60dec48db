//! Printing: one block per run (schedule, messages, outcomes, duplicates,
//! attempts, violations, the replay command) and a summary table.

use std::collections::BTreeMap;
use std::time::Duration;

use super::checker::{Rule, Verdict};
use super::record::Run;
use super::schedule::Adapter;

/// Prints one run.
pub fn print_run(run: &Run, verdict: &Verdict, quick: bool, took: Duration) {
    let s = &run.schedule;
    let f = &verdict.figures;
    println!(
        "seed {} {} ({:.1}s, run {}): {}",
        s.seed,
        s.adapter,
        took.as_secs_f64(),
        run.tag,
        s
    );
    let outcomes: Vec<String> = f.outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "  messages {}: {}; duplicates {} (replayed {}); attempts {} (bound {}); link losses {}",
        run.publishes.len(),
        outcomes.join(", "),
        f.duplicates,
        run.outbox.replayed,
        f.attempts,
        f.attempt_bound.map_or("none".to_owned(), |b| b.to_string()),
        f.losses,
    );
    println!("  windows: {}", f.windows.join("; "));
    for note in &run.notes {
        println!("  note: {note}");
    }
    if verdict.violations.is_empty() {
        println!("  ok");
        return;
    }
    for v in &verdict.violations {
        println!("  VIOLATION [{}] {}", v.rule, v.detail);
    }
    println!(
        "  replay: cargo run --release --all-features --example campaign -- --seed {} --adapter {}{}",
        s.seed,
        s.adapter,
        if quick { " --quick" } else { "" }
    );
}

/// Per adapter: runs, failing runs, violations by rule, failing seeds.
#[derive(Debug, Default)]
pub struct Summary {
    runs: BTreeMap<Adapter, u64>,
    failed: BTreeMap<Adapter, Vec<(u64, Vec<Rule>)>>,
    rules: BTreeMap<(Adapter, Rule), u64>,
    faults: BTreeMap<(Adapter, &'static str), (u64, u64)>,
    skipped: Vec<(Adapter, u64, String)>,
}

impl Summary {
    /// Adds a checked run.
    pub fn add(&mut self, run: &Run, verdict: &Verdict) {
        let a = run.schedule.adapter;
        *self.runs.entry(a).or_default() += 1;
        let mut rules: Vec<Rule> = verdict.violations.iter().map(|v| v.rule).collect();
        rules.sort();
        rules.dedup();
        for r in &rules {
            *self.rules.entry((a, *r)).or_default() += 1;
        }
        for w in &run.schedule.windows {
            let e = self.faults.entry((a, w.fault.name())).or_default();
            e.0 += 1;
            e.1 += u64::from(!rules.is_empty());
        }
        if !rules.is_empty() {
            self.failed
                .entry(a)
                .or_default()
                .push((run.schedule.seed, rules));
        }
    }

    /// Records a run that could not be made.
    pub fn skip(&mut self, adapter: Adapter, seed: u64, why: &str) {
        self.skipped.push((adapter, seed, why.to_owned()));
    }

    /// Whether any run broke a rule.
    pub fn failed(&self) -> bool {
        self.failed.values().any(|v| !v.is_empty())
    }

    /// How many runs were made.
    pub fn runs(&self) -> u64 {
        self.runs.values().sum()
    }

    /// Prints the table.
    pub fn print(&self) {
        println!();
        println!("== campaign summary ==");
        println!("{:<6} {:>5} {:>7}", "adapter", "runs", "failed");
        for (a, n) in &self.runs {
            let failed = self.failed.get(a).map_or(0, Vec::len);
            println!("{:<7} {:>5} {:>7}", a.to_string(), n, failed);
        }
        if !self.rules.is_empty() {
            println!();
            println!("{:<7} {:<26} {:>5}", "adapter", "rule", "runs");
            for ((a, r), n) in &self.rules {
                println!("{:<7} {:<26} {:>5}", a.to_string(), r.to_string(), n);
            }
        }
        println!();
        println!(
            "{:<7} {:<15} {:>7} {:>16}",
            "adapter", "fault", "windows", "in failed runs"
        );
        for ((a, f), (n, failed)) in &self.faults {
            println!("{:<7} {:<15} {:>7} {:>16}", a.to_string(), f, n, failed);
        }
        for (a, runs) in &self.failed {
            println!();
            println!("{a} failing seeds:");
            for (seed, rules) in runs {
                let names: Vec<String> = rules.iter().map(Rule::to_string).collect();
                println!("  {seed}: {}", names.join(", "));
            }
        }
        for (a, seed, why) in &self.skipped {
            println!("skipped {a} seed {seed}: {why}");
        }
    }
}
