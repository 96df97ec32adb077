//! Keeps `scripts/bench.sh` honest without running a benchmark: shellcheck
//! finds no problem, its arguments are checked, and the summary of a made-up
//! run (every scenario, three rounds) has the JSON shape issue 6 asks for
//! with medians and witan/etcd ratios computed as documented. Nothing here
//! times anything.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use witan_tests::run_bounded;

const SCENARIOS: [&str; 12] = [
    "put_1",
    "put_64",
    "put_256",
    "txn_put_64",
    "range_lin_1",
    "range_lin_64",
    "range_ser_64",
    "range_1000_keys",
    "watch_10k",
    "lease_keepalive",
    "rss_1m_keys",
    "restart_1m_keys",
];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench.sh")
}

/// Exit code (None if killed), stdout and stderr of `bash scripts/bench.sh ARGS`.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn bench(args: &[&str]) -> Ran {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).args(args);
    let out = run_bounded(cmd, None, Duration::from_secs(60));
    Ran {
        code: out.status.and_then(|s| s.code()),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

#[test]
fn shellcheck_finds_nothing() {
    let mut cmd = Command::new("shellcheck");
    cmd.arg(script());
    let out = run_bounded(cmd, None, Duration::from_secs(60));
    assert!(
        out.status.is_some_and(|s| s.success()),
        "shellcheck scripts/bench.sh (scripts/test.sh installs shellcheck):\n{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn arguments_are_checked_before_anything_is_built() {
    let help = bench(&["--help"]);
    assert_eq!(help.code, Some(0), "{}", help.stderr);
    assert!(help.stdout.contains("--quick"), "{}", help.stdout);
    for bad in [&["--no-such-flag"][..], &["--scenarios", "put_1,put_2"][..]] {
        let out = bench(bad);
        assert_eq!(out.code, Some(2), "{bad:?}: {}", out.stderr);
    }
}

/// A made-up run: per round, witan and etcd figures for every scenario.
fn fake_run(dir: &Path) {
    let mut tsv = String::new();
    for round in 1..=3 {
        let r = f64::from(round);
        for scenario in SCENARIOS {
            for (system, scale) in [("witan", 2.0), ("etcd", 1.0)] {
                let rows: Vec<(&str, f64)> = match scenario {
                    "rss_1m_keys" => vec![("rss_mb", 100.0 * scale * r), ("disk_mb", 50.0 * r)],
                    "restart_1m_keys" => vec![("restart_ms", 1000.0 * scale + r)],
                    _ => vec![
                        ("rps", 1000.0 * scale * r),
                        ("p50_ms", scale * r),
                        ("p99_ms", 4.0 * scale * r),
                    ],
                };
                for (metric, value) in rows {
                    writeln!(tsv, "{round}\t{scenario}\t{system}\t{metric}\t{value}").unwrap();
                }
            }
        }
    }
    std::fs::write(dir.join("results.tsv"), tsv).unwrap();
    std::fs::write(
        dir.join("meta"),
        "etcd_version=3.6.16\netcd_source=test\nrounds=3\nload_start=1.5\nload_end=2.5\n",
    )
    .unwrap();
}

#[test]
fn summary_ends_with_the_json_line_issue_6_describes() {
    let dir = tempfile::tempdir().unwrap();
    fake_run(dir.path());
    let out = bench(&["--summarise", dir.path().to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let last = out.stdout.lines().last().expect("some output");
    let summary: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(summary["etcd_version"], "3.6.16");
    let scenarios = summary["scenarios"].as_object().expect("scenarios object");
    let mut names: Vec<&str> = scenarios.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = SCENARIOS.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);
    for (name, entry) in scenarios {
        assert!(
            entry["witan"].is_object() && entry["etcd"].is_object(),
            "{name}"
        );
        assert!(entry["ratio"].is_f64(), "{name}: ratio {}", entry["ratio"]);
        assert_eq!(entry["witan"]["rounds"], 3, "{name}");
    }
    // Throughput scenarios compare requests/s; put_1 its median latency.
    assert_eq!(scenarios["put_64"]["ratio_of"], "rps");
    assert_eq!(scenarios["put_64"]["witan"]["rps"], 4000.0); // median of 2000, 4000, 6000
    assert_eq!(scenarios["put_64"]["ratio"], 2.0);
    assert_eq!(scenarios["put_1"]["ratio_of"], "p50_ms");
    assert_eq!(scenarios["put_1"]["ratio_p99"], 2.0);
    assert_eq!(scenarios["rss_1m_keys"]["ratio_of"], "rss_mb");
    assert_eq!(scenarios["restart_1m_keys"]["ratio_of"], "restart_ms");
    // The human table comes before the JSON and names every scenario.
    for name in SCENARIOS {
        assert!(
            out.stdout.contains(&format!("\n{name} ")),
            "table lacks {name}"
        );
    }
    assert!(dir.path().join("summary.json").is_file());
}
