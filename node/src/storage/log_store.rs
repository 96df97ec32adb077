//! The Raft log and vote in redb (openraft's `RaftLogStorage`).
//!
//! An append is written at once (readable, not yet durable) and its fsync is
//! left to a flusher thread, which makes every append that arrived meanwhile
//! durable with one fsync and only then tells openraft. So the leader's own
//! fsync runs in parallel with replication to followers, and appends that
//! queue up share one fsync. Group commit also happens above: the proposer
//! packs many client requests into one entry.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};
use redb::{Durability, ReadableTable};

use super::{META, RAFT_LOG, Store, inline, meta_key, meta_rmp, to_rmp};
use crate::raft::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// The log half of a member's database.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    /// Opens the log and starts its flusher thread, which ends when the
    /// last clone of the log store is dropped.
    pub fn new(store: Store) -> Result<Self, std::io::Error> {
        Self::with_fsync_histogram(store, None)
    }

    /// Like [`LogStore::new`], timing each durable commit (the "WAL
    /// fsync") into `fsync` when given.
    pub fn with_fsync_histogram(
        store: Store,
        fsync: Option<prometheus::Histogram>,
    ) -> Result<Self, std::io::Error> {
        let (flusher, pending) = std::sync::mpsc::channel();
        let db = store.clone();
        std::thread::Builder::new()
            .name("witan-log-flush".into())
            .spawn(move || flush_loop(db, pending, fsync))?;
        Ok(LogStore { store, flusher })
    }

    fn read_entries(
        &self,
        lo: Bound<u64>,
        hi: Bound<u64>,
    ) -> Result<Vec<Entry>, super::StorageError> {
        let txn = self.store.db().begin_read()?;
        let log = txn.open_table(RAFT_LOG)?;
        let mut out = Vec::new();
        for item in log.range::<u64>((lo, hi))? {
            let (_, raw) = item?;
            let entry: Entry = rmp_serde::from_slice(raw.value())
                .map_err(|e| super::StorageError::corrupt("raft log entry", e))?;
            out.push(entry);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, super::StorageError> {
        log_state(&self.store)
    }

    fn put_meta(
        &self,
        key: &'static str,
        value: &[u8],
        durability: Durability,
    ) -> Result<(), super::StorageError> {
        let mut txn = self.store.db().begin_write()?;
        txn.set_durability(durability)
            .map_err(|e| super::StorageError::corrupt("durability", e))?;
        txn.open_table(META)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, super::StorageError> {
        let txn = self.store.db().begin_read()?;
        let meta = txn.open_table(META)?;
        meta_rmp(&meta, key)
    }

    fn append_entries(&self, entries: Vec<Entry>) -> Result<(), super::StorageError> {
        let mut txn = self.store.db().begin_write()?;
        // Readable now, durable once the flusher's next commit lands.
        txn.set_durability(Durability::None)
            .map_err(|e| super::StorageError::corrupt("durability", e))?;
        {
            let mut log = txn.open_table(RAFT_LOG)?;
            for entry in &entries {
                log.insert(entry.log_id.index, to_rmp(entry).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn remove_range(
        &self,
        lo: Bound<u64>,
        hi: Bound<u64>,
        purged: Option<LogId>,
    ) -> Result<(), super::StorageError> {
        let txn = self.store.db().begin_write()?;
        {
            let mut log = txn.open_table(RAFT_LOG)?;
            log.retain_in::<u64, _>((lo, hi), |_, _| false)?;
            if let Some(purged) = purged {
                txn.open_table(META)?
                    .insert(meta_key::LAST_PURGED, to_rmp(&purged).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// The log's first and last ids as stored.
fn log_state(store: &Store) -> Result<LogState<TypeConfig>, super::StorageError> {
    let txn = store.db().begin_read()?;
    let meta = txn.open_table(META)?;
    let last_purged: Option<LogId> = meta_rmp(&meta, meta_key::LAST_PURGED)?;
    let log = txn.open_table(RAFT_LOG)?;
    let last = match log.last()? {
        Some((_, raw)) => {
            let entry: Entry = rmp_serde::from_slice(raw.value())
                .map_err(|e| super::StorageError::corrupt("raft log entry", e))?;
            Some(entry.log_id)
        }
        None => last_purged,
    };
    Ok(LogState {
        last_purged_log_id: last_purged,
        last_log_id: last,
    })
}

/// The vote a member restarts with: the same term and candidate, but never
/// "committed" (never "I lead"). openraft would otherwise restart a former
/// leader as leader of its old term, and that is unsafe here: a leader's
/// appends become durable in the background (group fsync) while they are
/// already being replicated, so after `kill -9` its log may lack entries
/// its followers hold, and as leader of the same term it would write
/// different entries at those indexes with the same log ids. Its commit
/// index is not durable either, so it would also answer ReadIndex with a
/// stale index. Restarted, it must win a new term like any candidate.
/// Keeping the term and the candidate keeps the promise a vote makes: no
/// second vote in that term.
pub fn forget_leadership(mut vote: Vote) -> Vote {
    vote.committed = false;
    vote
}

/// The id of the last entry in the log (appended, maybe not yet durable),
/// which is what a vote compares.
pub fn last_log_id(store: &Store) -> Result<Option<LogId>, super::StorageError> {
    Ok(log_state(store)?.last_log_id)
}

fn io_err(
    e: super::StorageError,
    f: fn(&super::StorageError) -> StorageIOError<NodeId>,
) -> StorageError {
    StorageError::IO { source: f(&e) }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let lo = range.start_bound().cloned();
        let hi = range.end_bound().cloned();
        inline(|| self.read_entries(lo, hi))
            .map_err(|e| io_err(e, |e| StorageIOError::read_logs(e)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        inline(|| self.log_state()).map_err(|e| io_err(e, |e| StorageIOError::read_logs(e)))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        inline(|| self.put_meta(meta_key::VOTE, &to_rmp(vote), Durability::Immediate))
            .map_err(|e| io_err(e, |e| StorageIOError::write_vote(e)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> = inline(|| self.get_meta(meta_key::VOTE))
            .map_err(|e| io_err(e, |e| StorageIOError::read_vote(e)))?;
        Ok(vote.map(forget_leadership))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Without fsync: the committed id only lets a restart re-apply
        // sooner; losing it is safe. It rides along with the next fsync.
        inline(|| self.put_meta(meta_key::COMMITTED, &to_rmp(&committed), Durability::None))
            .map_err(|e| io_err(e, |e| StorageIOError::write(e)))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = inline(|| self.get_meta(meta_key::COMMITTED))
            .map_err(|e| io_err(e, |e| StorageIOError::read(e)))?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        match inline(|| self.append_entries(entries)) {
            // PLANTED BUG (feature `ack-before-fsync`, robustness suite
            // only): report the append durable while it is not, and never
            // fsync it. A crash then loses acknowledged writes.
            #[cfg(feature = "ack-before-fsync")]
            Ok(()) => {
                let _not_flushed = &self.flusher;
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            #[cfg(not(feature = "ack-before-fsync"))]
            Ok(()) => {
                if let Err(unsent) = self.flusher.send(callback) {
                    // The flusher only ends when every sender is gone, so
                    // this cannot happen while `self` exists.
                    unsent
                        .0
                        .log_io_completed(Err(std::io::Error::other("log flusher stopped")));
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(e, |e| StorageIOError::write_logs(e)))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        inline(|| self.remove_range(Bound::Included(log_id.index), Bound::Unbounded, None))
            .map_err(|e| io_err(e, |e| StorageIOError::write_logs(e)))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        inline(|| {
            self.remove_range(
                Bound::Unbounded,
                Bound::Included(log_id.index),
                Some(log_id),
            )
        })
        .map_err(|e| io_err(e, |e| StorageIOError::write_logs(e)))
    }
}

/// Makes pending appends durable: one fsync for everything that queued up
/// while the previous one ran, then every waiting callback is told.
fn flush_loop(
    store: Store,
    pending: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>,
    fsync: Option<prometheus::Histogram>,
) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        waiting.extend(pending.try_iter());
        let started = std::time::Instant::now();
        // An empty durable commit still writes a new commit header and
        // fsyncs, which makes every earlier non-durable commit durable.
        let result = store
            .db()
            .begin_write()
            .map_err(redb::Error::from)
            .and_then(|txn| txn.commit().map_err(redb::Error::from));
        match (&result, &fsync) {
            (Err(e), _) => tracing::error!(error = %e, "flushing the raft log failed"),
            (Ok(()), Some(fsync)) => fsync.observe(started.elapsed().as_secs_f64()),
            (Ok(()), None) => {}
        }
        for callback in waiting {
            callback.log_io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_leader_keeps_its_term_and_vote_but_not_its_leadership() {
        let mut led = Vote::new(7, 3);
        led.commit();
        assert!(led.is_committed());
        let restarted = forget_leadership(led);
        assert!(!restarted.is_committed());
        assert_eq!(restarted.leader_id().term, 7);
        assert_eq!(restarted.leader_id().voted_for(), Some(3));
    }
}
