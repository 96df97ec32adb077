//! `witan-robustness`: single-fault runs against the `witan` binary in
//! `$WITAN_BIN` (scripts/robustness.sh builds it and passes it on).
//!
//! Ends with one line `runs=N violations=V lost_acked_writes=L seed=S` and
//! exits non-zero when any run found a violation.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use witan_robustness::scenario::{self, RunOptions};

/// The long mode: a leader `kill -9` every 5–15 s for this long under
/// traffic, then [`LONG_RUNS`] single-fault runs.
const LONG_FOR: Duration = Duration::from_secs(600);
const LONG_RUNS: u64 = 500;

/// What the runs found, summed over every worker.
#[derive(Default)]
struct Tally {
    runs: u64,
    violations: usize,
    lost: usize,
}

struct Args {
    runs: u64,
    seed: Option<u64>,
    fault: Option<String>,
    stop_at_first: bool,
    /// `--jobs N`: runs at once, each its own cluster, ports and dirs.
    jobs: usize,
    /// `--long`: the leader-kill loop for this long, then the runs.
    long: Option<Duration>,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 30,
        seed: None,
        fault: None,
        stop_at_first: false,
        jobs: 1,
        long: None,
    };
    let mut runs_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => {
                args.runs = value()?.parse().context("--runs")?;
                runs_given = true;
            }
            "--long" => args.long = Some(LONG_FOR),
            // A shorter leader-kill loop, to try the long mode out.
            "--long-secs" => {
                args.long = Some(Duration::from_secs(
                    value()?.parse().context("--long-secs")?,
                ));
            }
            "--seed" => args.seed = Some(value()?.parse().context("--seed")?),
            "--fault" => args.fault = Some(value()?),
            "--stop-at-first-violation" => args.stop_at_first = true,
            "--jobs" => {
                args.jobs = value()?.parse().context("--jobs")?;
                if args.jobs == 0 {
                    bail!("--jobs must be at least 1");
                }
            }
            "-h" | "--help" => {
                println!(
                    "witan-robustness [--runs N] [--seed S] [--fault KIND] [--stop-at-first-violation] \
                     [--jobs N] [--long | --long-secs S]\n\
                     witan-robustness --check REPORT/history.json\n\
                     fault kinds: {}",
                    witan_robustness::nemesis::KINDS.join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if args.long.is_some() && !runs_given {
        args.runs = LONG_RUNS;
    }
    Ok(args)
}

/// `--check FILE`: runs the checker again on a report's `history.json`
/// (e.g. after changing the checker), prints the verdict.
fn recheck(path: &str) -> anyhow::Result<()> {
    let raw = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let history: witan_robustness::history::History =
        serde_json::from_slice(&raw).with_context(|| format!("parsing {path}"))?;
    let verdict = witan_robustness::checker::check(&history);
    for v in &verdict.violations {
        println!("  {v}");
    }
    println!(
        "ops={} watch_events={} violations={} lost_acked_writes={}",
        verdict.ops,
        verdict.watch_events,
        verdict.violations.len(),
        verdict.lost_acked_writes
    );
    if !verdict.ok() {
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if let [flag, path] = &std::env::args().skip(1).collect::<Vec<_>>()[..]
        && flag == "--check"
    {
        return recheck(path);
    }
    let args = parse()?;
    // Run i uses seed + i, so `--seed <that> --runs 1` replays run i.
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000)
    });
    println!("robustness: base seed {seed} (replay run i with --seed {seed}+i --runs 1)");
    let options = RunOptions {
        fault: args.fault.clone(),
        ..RunOptions::default()
    };
    // The long mode's loop is run "long" with the base seed; the
    // single-fault runs that follow use seed + 1, seed + 2, ...
    let long_run = args.long.map(|total| {
        let long = RunOptions {
            fault: Some("kill-leader".to_string()),
            leader_kills_for: Some(total),
            ..options.clone()
        };
        ("long".to_string(), seed, long)
    });
    let single = (0..args.runs).map(|i| {
        let first = u64::from(args.long.is_some());
        (format!("{i}"), seed + first + i, options.clone())
    });
    let queue = Mutex::new(long_run.into_iter().chain(single));
    let tally = Mutex::new(Tally::default());
    // Each worker takes the next run until none is left (or a violation
    // stops everyone); results print as runs finish.
    std::thread::scope(|scope| {
        for _ in 0..args.jobs {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                    let Some((name, run_seed, run_options)) = next else {
                        return;
                    };
                    let result = scenario::run(run_seed, &run_options);
                    let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
                    tally.runs += 1;
                    println!("run {name}: {}", result.summary());
                    for v in &result.verdict.violations {
                        println!("  {v}");
                    }
                    if let Some(dir) = &result.report {
                        println!("  report: {}", dir.display());
                    }
                    tally.violations += result.verdict.violations.len();
                    tally.lost += result.verdict.lost_acked_writes;
                    if args.stop_at_first && tally.violations > 0 {
                        // Nobody takes another run.
                        let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
                        queue.by_ref().for_each(drop);
                        return;
                    }
                }
            });
        }
    });
    let Tally {
        runs,
        violations,
        lost,
    } = tally.into_inner().unwrap_or_else(PoisonError::into_inner);
    println!("runs={runs} violations={violations} lost_acked_writes={lost} seed={seed}");
    if violations > 0 {
        std::process::exit(1);
    }
    Ok(())
}
