//! The short robustness run CI makes: one run per fault kind that witan
//! currently survives, each on its own cluster, ports and dirs, with the
//! seed printed (`WITAN_ROBUSTNESS_SEED=N` replays it). The full suite,
//! the other fault kinds and the planted bugs are `scripts/robustness.sh`.

use witan_robustness::scenario::{self, RunOptions};

/// Fault kinds CI runs: every kind the nemesis has.
const CI_FAULTS: [&str; 6] = [
    "pause-leader",
    "pause-follower",
    "kill-leader",
    "kill-follower",
    "kill-any",
    "kill-single",
];

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
    for (i, fault) in CI_FAULTS.iter().enumerate() {
        let options = RunOptions {
            fault: Some((*fault).to_string()),
            ..RunOptions::default()
        };
        let result = scenario::run(seed + i as u64, &options);
        eprintln!("{}", result.summary());
        if !result.verdict.ok() {
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
