//! Faults: exactly one per run, chosen from the run's seed.
//!
//! Implemented: `kill -9` of the leader, a follower or any member, then a
//! restart on the same data dir; the same on a one-member cluster (the etcd
//! #14370 case: a lone member must not lose an acknowledged write); and
//! SIGSTOP/SIGCONT pauses of 1–5 s of the leader, a follower or any member.
//! Not yet: the peer-link proxy (partitions, delay), member replacement,
//! compaction/defrag during traffic, snapshot catch-up.

use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use witan_tests::Cluster;

/// Which member a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leader,
    Follower,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`, down for `down_ms`, then restarted.
    Kill { target: Target, down_ms: u64 },
    /// A one-member cluster, `kill -9`, restarted after `down_ms`.
    KillSingle { down_ms: u64 },
    /// SIGSTOP for `ms`, then SIGCONT.
    Pause { target: Target, ms: u64 },
}

/// Every fault kind by its command-line name.
pub const KINDS: [&str; 7] = [
    "kill-leader",
    "kill-follower",
    "kill-any",
    "kill-single",
    "pause-leader",
    "pause-follower",
    "pause-any",
];

impl Fault {
    /// The fault of kind `kind` (one of [`KINDS`]), its durations drawn
    /// from `rng`.
    pub fn of_kind(kind: &str, rng: &mut StdRng) -> Option<Fault> {
        let down_ms = rng.random_range(200..1500);
        let pause_ms = rng.random_range(1000..=5000);
        Some(match kind {
            "kill-leader" => Fault::Kill {
                target: Target::Leader,
                down_ms,
            },
            "kill-follower" => Fault::Kill {
                target: Target::Follower,
                down_ms,
            },
            "kill-any" => Fault::Kill {
                target: Target::Any,
                down_ms,
            },
            "kill-single" => Fault::KillSingle { down_ms },
            "pause-leader" => Fault::Pause {
                target: Target::Leader,
                ms: pause_ms,
            },
            "pause-follower" => Fault::Pause {
                target: Target::Follower,
                ms: pause_ms,
            },
            "pause-any" => Fault::Pause {
                target: Target::Any,
                ms: pause_ms,
            },
            _ => return None,
        })
    }

    /// A fault of a kind drawn from `rng`.
    pub fn random(rng: &mut StdRng) -> Fault {
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        Fault::of_kind(kind, rng).expect("every listed kind is known")
    }

    /// How many members the run's cluster has.
    pub fn members(&self) -> usize {
        match self {
            Fault::KillSingle { .. } => 1,
            _ => 3,
        }
    }

    /// Injects the fault and heals it (restart or SIGCONT); returns what it
    /// did. Blocks for the fault's duration.
    pub fn inject(&self, cluster: &mut Cluster, rng: &mut StdRng) -> String {
        match *self {
            Fault::Kill { target, down_ms } => {
                let i = pick(cluster, target, rng);
                cluster.kill(i);
                std::thread::sleep(Duration::from_millis(down_ms));
                cluster.restart(i);
                format!("kill -9 member {i} ({target:?}), restarted after {down_ms} ms")
            }
            Fault::KillSingle { down_ms } => {
                cluster.kill(0);
                std::thread::sleep(Duration::from_millis(down_ms));
                cluster.restart(0);
                format!("kill -9 the only member, restarted after {down_ms} ms")
            }
            Fault::Pause { target, ms } => {
                let i = pick(cluster, target, rng);
                cluster.pause(i);
                std::thread::sleep(Duration::from_millis(ms));
                cluster.resume(i);
                format!("SIGSTOP member {i} ({target:?}) for {ms} ms, then SIGCONT")
            }
        }
    }
}

/// The long mode's faults: `kill -9` of the leader every 5–15 s, each
/// restarted after 0.2–1.5 s, until `total` has passed. Returns what it did.
pub fn leader_kills(cluster: &mut Cluster, rng: &mut StdRng, total: Duration) -> String {
    let started = Instant::now();
    let mut kills = 0;
    loop {
        let gap = Duration::from_millis(rng.random_range(5_000..=15_000));
        let left = total.saturating_sub(started.elapsed());
        if gap >= left {
            std::thread::sleep(left);
            break;
        }
        // The schedule itself: the fault fires this long after the last.
        std::thread::sleep(gap);
        let down_ms = rng.random_range(200..1500);
        Fault::Kill {
            target: Target::Leader,
            down_ms,
        }
        .inject(cluster, rng);
        kills += 1;
    }
    format!(
        "kill -9 of the leader {kills} times over {} s (every 5-15 s, down 0.2-1.5 s)",
        started.elapsed().as_secs()
    )
}

fn pick(cluster: &Cluster, target: Target, rng: &mut StdRng) -> usize {
    let n = cluster.len();
    match target {
        Target::Any => rng.random_range(0..n),
        Target::Leader => cluster.leader(),
        Target::Follower => {
            let leader = cluster.leader();
            let followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
            followers[rng.random_range(0..followers.len())]
        }
    }
}
