//! The robustness runs CI makes: 30 single-fault runs cycling through every
//! fault kind, each on its own cluster, ports and dirs, with the seed
//! printed (`WITAN_ROBUSTNESS_SEED=N` replays it). The full suite,
//! the other fault kinds and the planted bugs are `scripts/robustness.sh`.

use witan_robustness::nemesis::KINDS;
use witan_robustness::scenario::{self, RunOptions};

/// Runs CI makes, cycling through every fault kind the nemesis has.
const CI_RUNS: usize = 30;

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
    for (i, fault) in KINDS.iter().cycle().take(CI_RUNS).enumerate() {
        let options = RunOptions {
            fault: Some((*fault).to_string()),
            ..RunOptions::default()
        };
        let result = scenario::run(seed + i as u64, &options);
        eprintln!("{}", result.summary());
        // A snapshot catch-up run that caught up from the log tested
        // nothing it claims to.
        let missed_snapshot = *fault == "snapshot-catch-up" && !result.did.contains("by snapshot");
        // Likewise a leader cut off long enough
        // (`nemesis::ELECTION_PROOF_MS`) that kept its office was not cut off.
        let kept_office = result.did.contains("leadership did NOT move");
        if !result.verdict.ok() || missed_snapshot || kept_office {
            let mut text = result.summary();
            for v in &result.verdict.violations {
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
