//! The soak run's bookkeeping, kept apart from its I/O so that the rules it checks are
//! themselves tested: [`Ledger`] holds one record per call the client made, and
//! [`Ledger::check`] holds them against the server's log of the calls it ran.
//!
//! The guarantees checked are those of docs/reliability.md: every call gets exactly one
//! outcome; a call answered with success was run; a call the client reports as certainly
//! not processed was not run; a call not marked idempotent ran at most once.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// How one call ended, as the caller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The answer came back, and it was the request's own body echoed.
    Ok,
    /// An answer came back, but not the one asked for.
    WrongAnswer,
    /// The call failed; `kind` names how, `maybe_processed` is the client's word on
    /// whether the server may have run it.
    Failed {
        /// The error's kind (`Timeout`, `Connect`, `ERROR 5`, ...).
        kind: &'static str,
        /// `false` means the client says the server certainly did not run it.
        maybe_processed: bool,
    },
}

/// One call the client made.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// The call's own id (carried in its body, logged by the server when it runs it).
    pub id: u64,
    /// Whether the call was marked idempotent (the client may then run it twice).
    pub idempotent: bool,
    /// How it ended.
    pub outcome: Outcome,
}

/// Every call made, and the calls the server ran.
#[derive(Debug, Default)]
pub struct Ledger {
    calls: Vec<CallRecord>,
    runs: HashMap<u64, u32>,
}

/// What [`Ledger::check`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Calls by outcome kind (`ok`, `Timeout (maybe processed)`, ...).
    pub by_kind: BTreeMap<String, u64>,
    /// Runs on the server (a call retried after a lost answer runs twice).
    pub runs: u64,
    /// Calls the server ran more than once (only idempotent calls may).
    pub ran_twice: u64,
    /// Broken guarantees, each described; empty when the run kept every one.
    pub violations: Vec<String>,
    /// Violations not listed in `violations` (it keeps the first 20).
    pub more_violations: u64,
}

impl Verdict {
    /// Whether every guarantee held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(what);
        } else {
            self.more_violations += 1;
        }
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records how a call ended.
    pub fn record(&mut self, call: CallRecord) {
        self.calls.push(call);
    }

    /// Records that the server ran call `id` once more.
    pub fn ran(&mut self, id: u64) {
        *self.runs.entry(id).or_default() += 1;
    }

    /// Calls recorded so far.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// Holds the calls against the runs. `issued` is how many calls were started: each
    /// must have exactly one record.
    pub fn check(&self, issued: u64) -> Verdict {
        let mut verdict = Verdict::default();
        let mut seen: HashMap<u64, ()> = HashMap::with_capacity(self.calls.len());
        for call in &self.calls {
            let kind = match &call.outcome {
                Outcome::Ok => "ok".to_string(),
                Outcome::WrongAnswer => "wrong answer".to_string(),
                Outcome::Failed {
                    kind,
                    maybe_processed,
                } => {
                    let processed = if *maybe_processed {
                        "maybe processed"
                    } else {
                        "not processed"
                    };
                    format!("{kind} ({processed})")
                }
            };
            *verdict.by_kind.entry(kind).or_default() += 1;
            if seen.insert(call.id, ()).is_some() {
                verdict.violation(format!("call {} has two outcomes", call.id));
                continue;
            }
            let runs = self.runs.get(&call.id).copied().unwrap_or(0);
            if runs > 1 {
                verdict.ran_twice += 1;
                if !call.idempotent {
                    verdict.violation(format!(
                        "call {} is not idempotent but ran {runs} times",
                        call.id
                    ));
                }
            }
            match &call.outcome {
                Outcome::Ok if runs == 0 => verdict.violation(format!(
                    "call {} was answered but the server never ran it",
                    call.id
                )),
                Outcome::WrongAnswer => {
                    verdict.violation(format!("call {} got another call's answer", call.id));
                }
                Outcome::Failed {
                    kind,
                    maybe_processed: false,
                } if runs > 0 => verdict.violation(format!(
                    "call {} failed ({kind}) as not processed, but the server ran it",
                    call.id
                )),
                _ => {}
            }
        }
        let recorded = self.calls.len() as u64;
        if recorded != issued {
            verdict.violation(format!(
                "{issued} calls were made but {recorded} outcomes recorded"
            ));
        }
        for (id, runs) in &self.runs {
            verdict.runs += u64::from(*runs);
            if !seen.contains_key(id) {
                verdict.violation(format!("the server ran call {id}, which nobody made"));
            }
        }
        verdict
    }
}

/// The report's table of outcomes, one line per kind.
pub fn outcome_table(verdict: &Verdict) -> String {
    let mut out = String::new();
    for (kind, count) in &verdict.by_kind {
        let _ = writeln!(out, "  {count:>10}  {kind}");
    }
    out
}

/// This process's resident set now and at its peak, in KiB, from `/proc/self/status`
/// (`None` where there is no such file).
pub fn rss_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u64, idempotent: bool, outcome: Outcome) -> CallRecord {
        CallRecord {
            id,
            idempotent,
            outcome,
        }
    }

    fn failed(kind: &'static str, maybe_processed: bool) -> Outcome {
        Outcome::Failed {
            kind,
            maybe_processed,
        }
    }

    #[test]
    fn a_run_that_kept_its_word_passes() {
        let mut ledger = Ledger::new();
        ledger.record(call(1, false, Outcome::Ok));
        ledger.ran(1);
        ledger.record(call(2, true, Outcome::Ok));
        ledger.ran(2);
        ledger.ran(2);
        ledger.record(call(3, false, failed("Timeout", true)));
        ledger.ran(3);
        ledger.record(call(4, false, failed("Connect", false)));
        ledger.record(call(5, false, failed("Timeout", true)));
        let verdict = ledger.check(5);
        assert!(verdict.passed(), "{:?}", verdict.violations);
        assert_eq!(verdict.runs, 4);
        assert_eq!(verdict.ran_twice, 1);
        assert_eq!(verdict.by_kind["ok"], 2);
        assert_eq!(verdict.by_kind["Timeout (maybe processed)"], 2);
        assert_eq!(verdict.by_kind["Connect (not processed)"], 1);
    }

    #[test]
    fn each_broken_guarantee_is_named() {
        let cases: Vec<(Vec<CallRecord>, Vec<u64>, u64, &str)> = vec![
            (vec![call(1, false, Outcome::Ok)], vec![], 1, "never ran it"),
            (
                vec![call(1, false, failed("Connect", false))],
                vec![1],
                1,
                "as not processed, but the server ran it",
            ),
            (
                vec![call(1, false, failed("Timeout", true))],
                vec![1, 1],
                1,
                "not idempotent but ran 2 times",
            ),
            (
                vec![call(1, true, Outcome::Ok), call(1, true, Outcome::Ok)],
                vec![1],
                2,
                "has two outcomes",
            ),
            (
                vec![call(1, true, Outcome::Ok)],
                vec![1],
                2,
                "2 calls were made but 1",
            ),
            (vec![], vec![7], 0, "ran call 7, which nobody made"),
            (
                vec![call(1, true, Outcome::WrongAnswer)],
                vec![1],
                1,
                "another call's answer",
            ),
        ];
        for (calls, runs, issued, expected) in cases {
            let mut ledger = Ledger::new();
            for c in calls {
                ledger.record(c);
            }
            for id in runs {
                ledger.ran(id);
            }
            let verdict = ledger.check(issued);
            assert!(!verdict.passed(), "{expected}: not caught");
            assert!(
                verdict.violations.iter().any(|v| v.contains(expected)),
                "{expected}: got {:?}",
                verdict.violations
            );
        }
    }

    #[test]
    fn violations_past_twenty_are_counted_not_listed() {
        let mut ledger = Ledger::new();
        for id in 0..25 {
            ledger.record(call(id, false, Outcome::Ok));
        }
        let verdict = ledger.check(25);
        assert_eq!(verdict.violations.len(), 20);
        assert_eq!(verdict.more_violations, 5);
    }

    #[test]
    fn the_resident_set_is_read_where_proc_exists() {
        if std::path::Path::new("/proc/self/status").exists() {
            let (rss, peak) = rss_kib().expect("VmRSS and VmHWM");
            assert!(rss > 0 && peak >= rss, "rss {rss} KiB, peak {peak} KiB");
        }
    }
}
