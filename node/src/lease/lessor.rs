//! Deadlines of live leases, kept in memory on every member and acted on
//! only by the leader. Time is passed in, so the rules are testable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Deadline {
    ttl_secs: i64,
    expiry: Instant,
    /// A revoke for it has been proposed and not yet applied.
    revoking: bool,
}

/// Lease deadlines.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: Mutex<HashMap<i64, Deadline>>,
}

fn ttl(secs: i64) -> Duration {
    Duration::from_secs(secs.max(0) as u64)
}

impl Lessor {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Deadline>> {
        // A panic while holding this lock cannot leave the map half-written
        // (every update is a single insert or remove), so poison is ignored.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A grant was applied.
    pub fn granted(&self, id: i64, ttl_secs: i64, now: Instant) {
        self.lock().insert(
            id,
            Deadline {
                ttl_secs,
                expiry: now + ttl(ttl_secs),
                revoking: false,
            },
        );
    }

    /// A revoke was applied.
    pub fn revoked(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// Replaces every deadline (start-up, snapshot install): each lease gets
    /// its full TTL from `now`.
    pub fn reset(&self, leases: impl IntoIterator<Item = (i64, i64)>, now: Instant) {
        let mut map = self.lock();
        map.clear();
        for (id, ttl_secs) in leases {
            map.insert(
                id,
                Deadline {
                    ttl_secs,
                    expiry: now + ttl(ttl_secs),
                    revoking: false,
                },
            );
        }
    }

    /// This member just became leader: every lease restarts its TTL, since
    /// the old leader's keep-alives were never replicated.
    pub fn promote(&self, now: Instant) {
        for deadline in self.lock().values_mut() {
            deadline.expiry = now + ttl(deadline.ttl_secs);
            deadline.revoking = false;
        }
    }

    /// A keep-alive: the lease's TTL, or `None` when it does not exist.
    pub fn keep_alive(&self, id: i64, now: Instant) -> Option<i64> {
        let mut map = self.lock();
        let deadline = map.get_mut(&id)?;
        deadline.expiry = now + ttl(deadline.ttl_secs);
        Some(deadline.ttl_secs)
    }

    /// Remaining whole seconds (rounded up) and granted TTL of a lease.
    pub fn remaining(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let map = self.lock();
        let deadline = map.get(&id)?;
        let left = deadline.expiry.saturating_duration_since(now);
        let secs = left.as_millis().div_ceil(1000) as i64;
        Some((secs, deadline.ttl_secs))
    }

    /// Every lease id, in no particular order.
    pub fn ids(&self) -> Vec<i64> {
        self.lock().keys().copied().collect()
    }

    /// Leases past their deadline with no revoke in flight; they are marked
    /// so the next call does not return them again.
    pub fn take_expired(&self, now: Instant, max: usize) -> Vec<i64> {
        let mut map = self.lock();
        let mut out = Vec::new();
        for (id, deadline) in map.iter_mut() {
            if out.len() >= max {
                break;
            }
            if !deadline.revoking && deadline.expiry <= now {
                deadline.revoking = true;
                out.push(*id);
            }
        }
        out
    }

    /// A proposed revoke failed: let the next sweep try again.
    pub fn revoke_failed(&self, id: i64) {
        if let Some(deadline) = self.lock().get_mut(&id) {
            deadline.revoking = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_keep_alive() {
        let lessor = Lessor::new();
        let t0 = Instant::now();
        lessor.granted(1, 10, t0);
        assert!(
            lessor
                .take_expired(t0 + Duration::from_secs(9), 10)
                .is_empty()
        );
        assert_eq!(lessor.keep_alive(1, t0 + Duration::from_secs(9)), Some(10));
        assert!(
            lessor
                .take_expired(t0 + Duration::from_secs(18), 10)
                .is_empty()
        );
        assert_eq!(
            lessor.take_expired(t0 + Duration::from_secs(19), 10),
            vec![1]
        );
        // Marked as revoking: not handed out twice.
        assert!(
            lessor
                .take_expired(t0 + Duration::from_secs(20), 10)
                .is_empty()
        );
        lessor.revoke_failed(1);
        assert_eq!(
            lessor.take_expired(t0 + Duration::from_secs(20), 10),
            vec![1]
        );
        lessor.revoked(1);
        assert_eq!(lessor.keep_alive(1, t0), None);
    }

    #[test]
    fn remaining_rounds_up_and_promote_restarts() {
        let lessor = Lessor::new();
        let t0 = Instant::now();
        lessor.granted(7, 5, t0);
        assert_eq!(
            lessor.remaining(7, t0 + Duration::from_millis(1500)),
            Some((4, 5))
        );
        assert_eq!(
            lessor.remaining(7, t0 + Duration::from_secs(6)),
            Some((0, 5))
        );
        lessor.promote(t0 + Duration::from_secs(6));
        assert_eq!(
            lessor.remaining(7, t0 + Duration::from_secs(6)),
            Some((5, 5))
        );
        assert_eq!(lessor.remaining(8, t0), None);
    }
}
