//! How far the log is durable, for whoever must not act on more.
//!
//! openraft 0.9 holds its core until the leader's own append is flushed,
//! and only then replicates it, so a write paid for the leader's fsync and
//! a follower's one after the other. The leader's log store therefore
//! reports its own fresh appends done once they are written (see
//! `LogStore::append`), and Raft safety is kept at the two places where
//! an entry counted as committed becomes visible before the leader's fsync
//! could have ended: the state machine applies an entry, and the leader
//! tells followers a commit index, only once the leader's log holds that
//! entry durably. A committed entry thus always lies on a quorum of disks
//! (the leader's and a follower's that acknowledged it after its own
//! fsync), as the Raft thesis §10.2.1 has it for the leader writing its
//! log in parallel with replicating it.

use tokio::sync::watch;

use crate::raft::types::LogId;

/// The log's durability, as the flusher last published it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durability {
    /// The last entry that is on disk, with everything before it.
    pub upto: Option<LogId>,
    /// An fsync failed: nothing written since is durable, ever.
    pub failed: bool,
}

impl Durability {
    fn covers(&self, index: u64) -> bool {
        self.upto.is_some_and(|d| d.index >= index)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DurabilityError {
    #[error("syncing the raft log failed: entry {0} never became durable")]
    SyncFailed(u64),
    #[error("the raft log was closed before entry {0} became durable")]
    Closed(u64),
}

/// A waiter on the log's durability; cheap to clone.
#[derive(Clone, Debug)]
pub struct DurableLog(watch::Receiver<Durability>);

impl DurableLog {
    pub(crate) fn new(rx: watch::Receiver<Durability>) -> Self {
        DurableLog(rx)
    }

    /// Returns once the entry at `index`, and every one before it, is
    /// durable: at once, nearly always, since the entry's fsync began
    /// before a follower could acknowledge it.
    pub async fn wait_for(&self, index: u64) -> Result<(), DurabilityError> {
        if self.0.borrow().covers(index) {
            return Ok(());
        }
        let mut rx = self.0.clone();
        let reached = rx
            .wait_for(|d| d.failed || d.covers(index))
            .await
            .map_err(|_| DurabilityError::Closed(index))?;
        if reached.covers(index) {
            Ok(())
        } else {
            Err(DurabilityError::SyncFailed(index))
        }
    }

    /// The last durable entry now.
    pub fn upto(&self) -> Option<LogId> {
        self.0.borrow().upto
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use openraft::CommittedLeaderId;

    use super::*;

    fn at(index: u64) -> Durability {
        Durability {
            upto: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            failed: false,
        }
    }

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn waiting_ends_when_the_entry_is_durable_and_not_before() {
        let (tx, rx) = watch::channel(at(3));
        let log = DurableLog::new(rx);
        assert_eq!(log.wait_for(3).await, Ok(()));
        let mut later = pin!(log.wait_for(5));
        assert!(poll_once(later.as_mut()).is_pending());
        tx.send_replace(at(4));
        assert!(poll_once(later.as_mut()).is_pending());
        tx.send_replace(at(6));
        assert_eq!(later.await, Ok(()));
    }

    #[tokio::test]
    async fn a_failed_sync_or_a_closed_log_ends_the_wait_with_an_error() {
        let (tx, rx) = watch::channel(at(3));
        let log = DurableLog::new(rx);
        let mut waiting = pin!(log.wait_for(5));
        assert!(poll_once(waiting.as_mut()).is_pending());
        tx.send_modify(|d| d.failed = true);
        assert_eq!(waiting.await, Err(DurabilityError::SyncFailed(5)));
        // What was durable before the failure stays so.
        assert_eq!(log.wait_for(2).await, Ok(()));

        let (tx, rx) = watch::channel(at(3));
        let log = DurableLog::new(rx);
        let mut waiting = pin!(log.wait_for(9));
        assert!(poll_once(waiting.as_mut()).is_pending());
        drop(tx);
        assert_eq!(waiting.await, Err(DurabilityError::Closed(9)));
    }
}
