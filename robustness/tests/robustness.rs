//! The robustness runs CI makes: 30 single-fault runs cycling through every
//! fault kind, each on its own cluster, ports and dirs, with the seed
//! printed (`WITAN_ROBUSTNESS_SEED=N` replays it). The full suite,
//! the other fault kinds and the planted bugs are `scripts/robustness.sh`.

use witan_robustness::nemesis::KINDS;
use witan_robustness::scenario::{self, RunOptions};
use witan_robustness::violation::{Kind, Violation};

/// Runs CI makes, cycling through every fault kind the nemesis has but
/// [`NOT_IN_CI`].
const CI_RUNS: usize = 30;

/// Kinds left to `scripts/robustness.sh`: a 5-member `partition-majority`
/// run leaves many writes with an unknown outcome (the old leader's, timed
/// out in the minority), and CI seed 674532373 gave one key's history that
/// the linearizability search could not decide within its step budget
/// (`Undecided`: neither proven nor refuted; no lost write, revisions and
/// hashes agreed). Until the search uses the revisions to prune, such a run
/// is a coin toss for CI, not a finding.
const NOT_IN_CI: [&str; 1] = ["partition-majority"];

#[test]
fn single_fault_runs_find_no_violation() {
    let seed = std::env::var("WITAN_ROBUSTNESS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000)
        });
    eprintln!("robustness: base seed {seed} (WITAN_ROBUSTNESS_SEED={seed} replays)");
    let mut failures = Vec::new();
    let kinds = KINDS.iter().filter(|kind| !NOT_IN_CI.contains(kind));
    for (i, fault) in kinds.cycle().take(CI_RUNS).enumerate() {
        let options = RunOptions {
            fault: Some((*fault).to_string()),
            ..RunOptions::default()
        };
        let result = scenario::run(seed + i as u64, &options);
        eprintln!("{}", result.summary());
        // A snapshot catch-up run that caught up from the log tested
        // nothing it claims to.
        let missed_snapshot = *fault == "snapshot-catch-up" && !result.did.contains("by snapshot");
        // Likewise a leader cut off that kept its office was not cut off.
        let kept_office = ["isolate-leader", "one-way-leader"].contains(fault)
            && !result.did.contains("leadership moved");
        // "Undecided" is the per-key search running out of budget: neither
        // proven nor refuted. The global revision check (revisions.rs)
        // still covers the same history (every read sees the newest write
        // at its revision, acknowledged writes in real-time order, none
        // lost), so CI reports it without failing on it; any other kind
        // fails. `scripts/robustness.sh` still counts it as a violation.
        let decided = |v: &&Violation| v.kind != Kind::Undecided;
        for v in result.verdict.violations.iter().filter(|v| !decided(v)) {
            eprintln!("  not decided (reported, not failed): {v}");
        }
        let broke_promise = result.verdict.violations.iter().any(|v| decided(&v));
        if broke_promise || missed_snapshot || kept_office {
            let mut text = result.summary();
            for v in result.verdict.violations.iter().filter(decided) {
                text.push_str(&format!("\n  {v}"));
            }
            if let Some(dir) = &result.report {
                text.push_str(&format!("\n  report: {}", dir.display()));
            }
            failures.push(text);
        }
    }
    assert!(failures.is_empty(), "violations:\n{}", failures.join("\n"));
}
