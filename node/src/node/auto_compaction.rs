//! Deciding etcd's automatic compaction (`--auto-compaction-mode` and
//! `--auto-compaction-retention`): given the policy, what this member has
//! observed, the current and the compacted revision, which revision the
//! leader should compact to, if any. No I/O here; `tasks::auto_compact`
//! feeds it and proposes.
//!
//! - revision mode, retention N: compact to `current - N` once that is past
//!   the compacted revision.
//! - periodic mode, retention D: sample the revision every D/10 (at most
//!   every 6 minutes, as etcd) and compact to the revision observed D ago,
//!   so the history of the last D stays. Nothing is compacted until this
//!   member has observed for D.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::AutoCompaction;

/// How often revision mode looks (etcd: every 5 minutes).
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest sampling interval in periodic mode.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Periodic retentions longer than this are sampled as if this long (etcd).
const SAMPLE_PERIOD_CAP: Duration = Duration::from_secs(3600);

/// How often the task should tick for `policy`; `None` when off.
pub fn tick_interval(policy: AutoCompaction) -> Option<Duration> {
    match policy {
        AutoCompaction::Off => None,
        AutoCompaction::Revision(_) => Some(REVISION_CHECK_INTERVAL),
        AutoCompaction::Periodic(retention) => {
            Some((retention.min(SAMPLE_PERIOD_CAP) / 10).max(MIN_SAMPLE_INTERVAL))
        }
    }
}

/// Revision mode: the revision to compact to, keeping `retention`
/// revisions before `current`.
pub fn revision_target(current: i64, retention: i64, compacted: i64) -> Option<i64> {
    let target = current.saturating_sub(retention);
    (target > 0 && target > compacted).then_some(target)
}

/// Periodic mode: (time, revision) samples, oldest first, kept only as far
/// back as the newest sample at least one retention old.
#[derive(Debug, Default)]
pub struct Samples {
    ring: VecDeque<(Instant, i64)>,
}

impl Samples {
    /// Records `revision` as seen at `now` and forgets samples no longer
    /// needed for a retention of `retention`.
    pub fn record(&mut self, now: Instant, revision: i64, retention: Duration) {
        self.ring.push_back((now, revision));
        if let Some(cutoff) = now.checked_sub(retention) {
            // The front is needed only while the next one is not yet old
            // enough to stand in for it.
            while self.ring.len() > 1 && self.ring[1].0 <= cutoff {
                self.ring.pop_front();
            }
        }
    }

    /// The revision observed `retention` ago (the newest sample at least
    /// that old), if it is past `compacted`.
    pub fn target(&self, now: Instant, retention: Duration, compacted: i64) -> Option<i64> {
        let cutoff = now.checked_sub(retention)?;
        let (_, revision) = self.ring.iter().rev().find(|(at, _)| *at <= cutoff)?;
        (*revision > 0 && *revision > compacted).then_some(*revision)
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

/// One member's automatic compactor state: the policy and its samples.
#[derive(Debug)]
pub struct AutoCompactor {
    policy: AutoCompaction,
    samples: Samples,
}

impl AutoCompactor {
    pub fn new(policy: AutoCompaction) -> Self {
        AutoCompactor {
            policy,
            samples: Samples::default(),
        }
    }

    /// Records what this member sees at `now` (every member samples, so a
    /// new leader can act at once) and returns the revision to compact to.
    /// `compacted` is the current compact revision.
    pub fn observe(&mut self, now: Instant, current: i64, compacted: i64) -> Option<i64> {
        match self.policy {
            AutoCompaction::Off => None,
            AutoCompaction::Revision(retention) => revision_target(current, retention, compacted),
            AutoCompaction::Periodic(retention) => {
                self.samples.record(now, current, retention);
                self.samples.target(now, retention, compacted)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        assert_eq!(revision_target(3, 5, 0), None, "not enough history yet");
        assert_eq!(revision_target(5, 5, 0), None);
        assert_eq!(revision_target(6, 5, 0), Some(1));
        assert_eq!(revision_target(21, 5, 0), Some(16));
        assert_eq!(revision_target(21, 5, 16), None, "already there");
        assert_eq!(revision_target(21, 5, 18), None, "compacted further");
        assert_eq!(revision_target(22, 5, 16), Some(17));

        let mut c = AutoCompactor::new(AutoCompaction::Revision(5));
        let t = Instant::now();
        assert_eq!(c.observe(t, 21, 1), Some(16));
        assert!(c.samples.is_empty(), "revision mode does not sample");
    }

    #[test]
    fn periodic_mode_compacts_to_the_revision_seen_one_retention_ago() {
        let d = 10 * S;
        let t0 = Instant::now();
        let mut c = AutoCompactor::new(AutoCompaction::Periodic(d));
        // Revision grows by 10 each second; nothing happens for the first D.
        for i in 0..10u32 {
            assert_eq!(
                c.observe(t0 + i * S, 100 + 10 * i as i64, 0),
                None,
                "at {i}s"
            );
        }
        // At D: the revision observed at t0.
        assert_eq!(c.observe(t0 + d, 200, 0), Some(100));
        // Once compacted there, the next second moves on by one sample.
        assert_eq!(c.observe(t0 + 11 * S, 210, 100), Some(110));
        // Between samples, the newest at least D old counts.
        assert_eq!(c.observe(t0 + 11 * S + S / 2, 215, 110), None);
        assert_eq!(c.observe(t0 + 12 * S + S / 2, 225, 110), Some(120));
        // Nothing older than needed is kept.
        assert!(c.samples.len() <= 13, "{} samples", c.samples.len());
        // A compaction past the target (a manual one) is left alone.
        assert_eq!(c.observe(t0 + 13 * S, 230, 500), None);
        // With no writes, no new target appears.
        let mut idle = AutoCompactor::new(AutoCompaction::Periodic(d));
        for i in 0..30u32 {
            let target = idle.observe(t0 + i * S, 7, 7);
            assert_eq!(target, None, "at {i}s");
        }
    }

    #[test]
    fn samples_forget_what_is_no_longer_needed() {
        let d = 5 * S;
        let t0 = Instant::now();
        let mut s = Samples::default();
        for i in 0..100u32 {
            s.record(t0 + i * S, i as i64 + 1, d);
        }
        assert_eq!(s.len(), 6, "one sample D old plus the ones since");
        assert_eq!(s.target(t0 + 99 * S, d, 0), Some(95));
    }

    #[test]
    fn tick_intervals() {
        assert_eq!(tick_interval(AutoCompaction::Off), None);
        assert_eq!(
            tick_interval(AutoCompaction::Revision(10)),
            Some(REVISION_CHECK_INTERVAL)
        );
        assert_eq!(
            tick_interval(AutoCompaction::Periodic(Duration::from_secs(5))),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            tick_interval(AutoCompaction::Periodic(Duration::from_secs(24 * 3600))),
            Some(Duration::from_secs(360)),
            "capped as etcd does"
        );
        assert_eq!(
            tick_interval(AutoCompaction::Periodic(Duration::from_millis(50))),
            Some(MIN_SAMPLE_INTERVAL)
        );
    }
}
