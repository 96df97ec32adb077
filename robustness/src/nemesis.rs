//! Faults: exactly one per run, chosen from the run's seed.
//!
//! Implemented: `kill -9` of the leader, a follower or any member, then a
//! restart on the same data dir; the same on a one-member cluster (the etcd
//! #14370 case: a lone member must not lose an acknowledged write); and
//! SIGSTOP/SIGCONT pauses of 1–5 s of the leader, a follower or any member.
//! A follower kept down until it must catch up by snapshot.
//! Compaction and defragmentation under traffic; a member replaced
//! (remove, wipe, add back as a learner, promote); through the peer proxy
//! ([`crate::proxy`]), a member cut off from its peers, and delayed links;
//! a five-member cluster split into a minority holding the leader and a
//! majority; a leader whose outbound RPCs are cut while it still receives;
//! peer connections reset at random.

use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use witan_tests::Cluster;

use crate::proxy::{PeerProxy, Rules};

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
    /// `kill -9` of a follower kept down for `down_ms` on a cluster that
    /// snapshots every [`SNAPSHOT_COUNT`] entries, long enough for the
    /// leader to purge the entries it missed: it must catch up by snapshot.
    SnapshotCatchUp { down_ms: u64 },
    /// Compaction at `behind` revisions before the latest, then a
    /// defragmentation of every member, one after another, all under
    /// traffic; watches behind the compaction must be canceled for it.
    CompactDefrag { behind: i64 },
    /// A member replaced as etcd's runbook says ([`Cluster::replace`]):
    /// removed, wiped, added back as a learner, promoted.
    Replace { target: Target },
    /// One member cut off from the others on the peer links for `ms` (a
    /// minority of one; clients still reach it), then healed.
    Isolate { target: Target, ms: u64 },
    /// Every peer link delayed by `delay_ms` for `ms`.
    Delay { delay_ms: u64, ms: u64 },
    /// A five-member cluster split for `ms` into a minority of two (the
    /// leader and one follower) and a majority of three, then healed; the
    /// majority must elect a leader of its own, and what the old leader
    /// appended but could not commit must not show up as committed.
    PartitionMajority { ms: u64 },
    /// For `ms`, the connections the leader dials are held (its
    /// AppendEntries, heartbeats, forwarded requests and vote requests, and
    /// the answers to them), while the connections the others dial to it
    /// pass both ways (their vote requests and a new leader's AppendEntries
    /// reach it, and its answers come back): it can hear but not lead.
    OneWayLeader { ms: u64 },
    /// For `ms`, every `every_ms` each live peer connection is reset (RST on
    /// both sides) with probability `percent` %: RPCs in flight die and the
    /// members must dial again. The proxy's stand-in for dropped packets.
    ResetPeers {
        percent: u32,
        every_ms: u64,
        ms: u64,
    },
}

/// `--snapshot-count` of the snapshot catch-up runs; the leader keeps this
/// many entries behind a snapshot too (node/src/node/start.rs), so a member
/// that misses a few hundred entries is past the purged log.
pub const SNAPSHOT_COUNT: u64 = 50;

/// Every fault kind by its command-line name.
pub const KINDS: [&str; 16] = [
    "kill-leader",
    "kill-follower",
    "kill-any",
    "kill-single",
    "pause-leader",
    "pause-follower",
    "pause-any",
    "snapshot-catch-up",
    "compact-defrag",
    "replace-member",
    "isolate-leader",
    "isolate-follower",
    "delay-peers",
    "partition-majority",
    "one-way-leader",
    "reset-peers",
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
            "snapshot-catch-up" => Fault::SnapshotCatchUp {
                down_ms: rng.random_range(4000..=6000),
            },
            "compact-defrag" => Fault::CompactDefrag {
                behind: rng.random_range(0..=50),
            },
            "replace-member" => Fault::Replace {
                target: Target::Any,
            },
            "isolate-leader" => Fault::Isolate {
                target: Target::Leader,
                ms: rng.random_range(2000..=6000),
            },
            "isolate-follower" => Fault::Isolate {
                target: Target::Follower,
                ms: rng.random_range(2000..=6000),
            },
            "delay-peers" => Fault::Delay {
                delay_ms: rng.random_range(25..=125),
                ms: rng.random_range(3000..=6000),
            },
            "partition-majority" => Fault::PartitionMajority {
                ms: rng.random_range(2000..=6000),
            },
            "one-way-leader" => Fault::OneWayLeader {
                ms: rng.random_range(2000..=6000),
            },
            "reset-peers" => Fault::ResetPeers {
                percent: rng.random_range(20..=60),
                every_ms: rng.random_range(100..=500),
                ms: rng.random_range(2000..=6000),
            },
            _ => return None,
        })
    }

    /// A fault of a kind drawn from `rng`.
    pub fn random(rng: &mut StdRng) -> Fault {
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        Fault::of_kind(kind, rng).expect("every listed kind is known")
    }

    /// Flags every member of the run's cluster gets.
    pub fn member_args(&self) -> Vec<String> {
        match self {
            Fault::SnapshotCatchUp { .. } => {
                vec!["--snapshot-count".into(), SNAPSHOT_COUNT.to_string()]
            }
            _ => Vec::new(),
        }
    }

    /// Whether the run's members reach each other through the peer proxy.
    pub fn needs_proxy(&self) -> bool {
        matches!(
            self,
            Fault::Isolate { .. }
                | Fault::Delay { .. }
                | Fault::PartitionMajority { .. }
                | Fault::OneWayLeader { .. }
                | Fault::ResetPeers { .. }
        )
    }

    /// How many members the run's cluster has.
    pub fn members(&self) -> usize {
        match self {
            Fault::KillSingle { .. } => 1,
            Fault::PartitionMajority { .. } => 5,
            _ => 3,
        }
    }

    /// Injects the fault and heals it (restart or SIGCONT); returns what it
    /// did. Blocks for the fault's duration.
    /// `proxy` is the peer proxy when [`Fault::needs_proxy`].
    pub fn inject(
        &self,
        cluster: &mut Cluster,
        proxy: Option<&PeerProxy>,
        rng: &mut StdRng,
    ) -> String {
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
            Fault::SnapshotCatchUp { down_ms } => {
                let i = pick(cluster, Target::Follower, rng);
                cluster.kill(i);
                let log_before = log_len(cluster, i);
                std::thread::sleep(Duration::from_millis(down_ms));
                cluster.restart(i);
                let how = if installed_snapshot_since(cluster, i, log_before) {
                    "caught up by snapshot"
                } else {
                    "caught up from the log (NOT by snapshot: the leader had not purged)"
                };
                format!(
                    "kill -9 follower {i} for {down_ms} ms with --snapshot-count {SNAPSHOT_COUNT}, \
                     restarted: {how}"
                )
            }
            Fault::CompactDefrag { behind } => {
                let latest = cluster.status(cluster.leader())["header"]["revision"]
                    .as_i64()
                    .expect("header.revision");
                let at = (latest - behind).max(1);
                cluster.ctl(&["compact", &at.to_string()]);
                for i in 0..cluster.len() {
                    cluster.ctl_on(i, &["defrag"]);
                }
                format!(
                    "compact at revision {at} ({behind} behind the latest), \
                     then defrag of every member"
                )
            }
            Fault::Isolate { target, ms } => {
                let proxy = proxy.expect("isolate runs behind the peer proxy");
                let i = pick(cluster, target, rng);
                let ids = member_ids(cluster);
                proxy.set(Rules::isolate(i, cluster.len()));
                let after = match target {
                    Target::Leader => elected_while_cut(cluster, &ids, &[i], ms),
                    _ => {
                        std::thread::sleep(Duration::from_millis(ms));
                        String::new()
                    }
                };
                proxy.heal();
                format!(
                    "member {i} ({target:?}) cut off from its peers for {ms} ms, then healed{after}"
                )
            }
            Fault::Delay { delay_ms, ms } => {
                let proxy = proxy.expect("delay runs behind the peer proxy");
                proxy.set(Rules::delay_all(
                    Duration::from_millis(delay_ms),
                    cluster.len(),
                ));
                std::thread::sleep(Duration::from_millis(ms));
                proxy.heal();
                format!("every peer link delayed by {delay_ms} ms for {ms} ms")
            }
            Fault::PartitionMajority { ms } => {
                let proxy = proxy.expect("a partition runs behind the peer proxy");
                let leader = cluster.leader();
                let with = pick(cluster, Target::Follower, rng);
                let ids = member_ids(cluster);
                proxy.set(Rules::split(&[leader, with], cluster.len()));
                let after = elected_while_cut(cluster, &ids, &[leader, with], ms);
                proxy.heal();
                format!(
                    "members {leader} (Leader) and {with} split from the other {} for {ms} ms, \
                     then healed{after}",
                    cluster.len() - 2,
                )
            }
            Fault::OneWayLeader { ms } => {
                let proxy = proxy.expect("a one-way cut runs behind the peer proxy");
                let leader = cluster.leader();
                let ids = member_ids(cluster);
                proxy.set(Rules::one_way_from(leader, cluster.len()));
                let after = elected_while_cut(cluster, &ids, &[leader], ms);
                proxy.heal();
                format!(
                    "the connections leader {leader} dials held for {ms} ms (those dialled to it \
                     passing), then healed{after}"
                )
            }
            Fault::ResetPeers {
                percent,
                every_ms,
                ms,
            } => {
                let proxy = proxy.expect("resets run behind the peer proxy");
                let until = Instant::now() + Duration::from_millis(ms);
                let mut resets = 0;
                while Instant::now() < until {
                    resets += proxy.reset(|| rng.random_ratio(percent, 100));
                    std::thread::sleep(Duration::from_millis(every_ms));
                }
                format!(
                    "every {every_ms} ms for {ms} ms, {percent} % of the peer connections reset \
                     ({resets} resets)"
                )
            }
            Fault::Replace { target } => {
                let i = pick(cluster, target, rng);
                let id = cluster.replace(i);
                format!(
                    "member {i} ({target:?}) removed, wiped, added back as learner {id:x}, promoted"
                )
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
        .inject(cluster, None, rng);
        kills += 1;
    }
    format!(
        "kill -9 of the leader {kills} times over {} s (every 5-15 s, down 0.2-1.5 s)",
        started.elapsed().as_secs()
    )
}

/// Every member's id, by index (asked before a cut: the client ports stay
/// reachable through one, but a member that is down has no answer).
fn member_ids(cluster: &Cluster) -> Vec<Option<u64>> {
    let running = cluster.running();
    (0..cluster.len())
        .map(|i| running.contains(&i).then(|| cluster.member_id(i)))
        .collect()
}

/// The leader member `i` knows of right now, by index; `None` when it
/// knows none or does not answer.
fn leader_known_to(cluster: &Cluster, ids: &[Option<u64>], i: usize) -> Option<usize> {
    let out = cluster.run(
        &cluster.endpoint(i),
        &["endpoint", "status", "-w", "json"],
        None,
    );
    let leader = serde_json::from_str::<serde_json::Value>(&out.stdout)
        .ok()?
        .get(0)?["Status"]["leader"]
        .as_u64()?;
    ids.iter().position(|&id| id == Some(leader))
}

/// A cut at least this long must see the other side elect a leader: in
/// the long mode's 109 leader cuts (2026-11-25, a saturated machine) the
/// first report of a new leader came 0.6–2.4 s into the cut (median 1.1 s;
/// followers wait out an election timeout and their leader lease first).
/// Shorter cuts are kept: a leader that keeps its office through a brief
/// cut is a case to check too, but not proof of anything about the cut.
pub const ELECTION_PROOF_MS: u64 = 4000;

/// Proof that a cut was real: while the members in `cut` (the old leader
/// among them) are cut off, the others elect a leader of their own. Polls
/// the other side for that during the cut, which lasts `ms` whatever the
/// answer. Asked during the cut and not after the heal, because after it
/// the old leader may win a later election fairly (the cluster's leader
/// is anyone's once a slow machine misses a heartbeat).
fn elected_while_cut(cluster: &Cluster, ids: &[Option<u64>], cut: &[usize], ms: u64) -> String {
    let started = Instant::now();
    let until = started + Duration::from_millis(ms);
    let others: Vec<usize> = cluster
        .running()
        .into_iter()
        .filter(|i| !cut.contains(i))
        .collect();
    let mut elected = None;
    while elected.is_none() && Instant::now() < until {
        elected = others.iter().find_map(|&i| {
            leader_known_to(cluster, ids, i)
                .filter(|l| !cut.contains(l))
                .map(|l| (l, started.elapsed().as_millis()))
        });
        if elected.is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    match elected {
        Some((l, after_ms)) => {
            format!("; leadership moved: member {l} elected after {after_ms} ms")
        }
        None if ms < ELECTION_PROOF_MS => {
            "; no leader elected on the other side (a cut this short need not see one)".to_string()
        }
        None => "; leadership did NOT move: no leader elected on the other side".to_string(),
    }
}

fn log_len(cluster: &Cluster, i: usize) -> u64 {
    std::fs::metadata(cluster.member(i).log_path()).map_or(0, |m| m.len())
}

/// Whether member `i` logged a snapshot install after byte `from` of its
/// log, waiting up to 20 s for it (the catch-up follows the restart).
fn installed_snapshot_since(cluster: &Cluster, i: usize, from: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read(cluster.member(i).log_path()).unwrap_or_default();
        let new = log.get(from as usize..).unwrap_or_default();
        if String::from_utf8_lossy(new).contains("installed snapshot") {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
