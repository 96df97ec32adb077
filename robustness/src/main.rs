//! `witan-robustness`: single-fault runs against the `witan` binary in
//! `$WITAN_BIN` (scripts/robustness.sh builds it and passes it on).
//!
//! Ends with one line `runs=N violations=V lost_acked_writes=L seed=S` and
//! exits non-zero when any run found a violation.

use anyhow::{Context, bail};
use witan_robustness::scenario::{self, RunOptions};

struct Args {
    runs: u64,
    seed: Option<u64>,
    fault: Option<String>,
    stop_at_first: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 30,
        seed: None,
        fault: None,
        stop_at_first: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => args.runs = value()?.parse().context("--runs")?,
            "--seed" => args.seed = Some(value()?.parse().context("--seed")?),
            "--fault" => args.fault = Some(value()?),
            "--stop-at-first-violation" => args.stop_at_first = true,
            "-h" | "--help" => {
                println!(
                    "witan-robustness [--runs N] [--seed S] [--fault KIND] [--stop-at-first-violation]\n\
                     fault kinds: {}",
                    witan_robustness::nemesis::KINDS.join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
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
    let (mut runs, mut violations, mut lost) = (0u64, 0usize, 0usize);
    for i in 0..args.runs {
        let result = scenario::run(seed + i, &options);
        runs += 1;
        println!("run {i}: {}", result.summary());
        for v in &result.verdict.violations {
            println!("  {v}");
        }
        if let Some(dir) = &result.report {
            println!("  report: {}", dir.display());
        }
        violations += result.verdict.violations.len();
        lost += result.verdict.lost_acked_writes;
        if args.stop_at_first && violations > 0 {
            break;
        }
    }
    println!("runs={runs} violations={violations} lost_acked_writes={lost} seed={seed}");
    if violations > 0 {
        std::process::exit(1);
    }
    Ok(())
}
