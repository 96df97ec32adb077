//! openraft's `RaftLogStorage` over the segment-file log (`storage::wal`).
//!
//! An append is written at once (readable, not yet durable). A follower's
//! append is made durable before it is reported done, since its reply to
//! the leader promises the entries are on disk; the fdatasync runs on the
//! calling thread, because openraft's core waits for it anyway and a hand-
//! off to another thread and back costs two thread wake-ups on the write
//! path (on this project's 2-vCPU VM, more than the work). The leader's own
//! fresh entries are reported done once written and made durable by a
//! flusher thread: openraft 0.9 replicates an entry only after its leader's
//! append is reported done, which would put the leader's fsync and the
//! followers' one after each other. So the leader's fsync runs in parallel
//! with replication, appends that arrive during one share the next, and
//! what counts as committed waits for it where it becomes visible
//! (`wal::durable`). Group commit also happens above: the proposer packs
//! many client requests into one entry.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};
use prometheus::Histogram;
use redb::ReadableTable;

use super::wal::durable::DurableLog;
use super::wal::{Wal, WalError};
use super::{META, RAFT_LOG, Store, inline, meta_key, meta_rmp};
use crate::raft::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// The log half of a member's storage.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Wal>,
    /// Wakes the flusher thread, which makes every append so far durable:
    /// sent for each append reported done before its fsync.
    flusher: std::sync::mpsc::Sender<()>,
    /// This member's id, when its own appends as leader are reported done
    /// before their fsync (see the module comment).
    leader: Option<NodeId>,
    /// Times each fdatasync ("WAL fsync"), when set.
    fsync: Option<Histogram>,
}

impl LogStore {
    /// Opens the log in `<data-dir>/member/wal` next to `store`, lines it
    /// up with the state machine's durable applied index (see
    /// [`reconcile`]) and starts its flusher thread, which ends when the
    /// last clone of the log store is dropped. Each fdatasync (the "WAL
    /// fsync") is timed into `fsync` when given.
    pub fn open(store: &Store, fsync: Option<Histogram>) -> Result<Self, super::StorageError> {
        let dir = store
            .path()
            .parent()
            .map(|member| member.join("wal"))
            .ok_or_else(|| super::StorageError::corrupt("data dir", "no parent"))?;
        let wal = Arc::new(open_wal(store, &dir)?);
        reconcile(store, &wal)?;
        let (flusher, pending) = std::sync::mpsc::channel();
        let flushed = wal.clone();
        let flusher_fsync = fsync.clone();
        std::thread::Builder::new()
            .name("witan-log-flush".into())
            .spawn(move || flush_loop(flushed, pending, flusher_fsync))
            .map_err(|source| super::StorageError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(LogStore {
            wal,
            flusher,
            leader: None,
            fsync,
        })
    }

    /// Reports the appends of member `id`, while it leads, done once they
    /// are written. Only for a member whose state machine and peer network
    /// wait on [`LogStore::durable`], as `node::start` wires them.
    pub fn leading_as(mut self, id: NodeId) -> Self {
        self.leader = Some(id);
        self
    }

    /// Waits on how far the log is durable.
    pub fn durable(&self) -> DurableLog {
        self.wal.durable()
    }

    /// Writes `entries` after the last one and returns once they count as
    /// appended: once written for the leader's own (see the module
    /// comment), once durable otherwise.
    fn write(&self, entries: &[Entry]) -> Result<(), WalError> {
        inline(|| self.wal.append(entries))?;
        if self.reports_before_fsync(entries) {
            // The flusher only ends once every sender is gone.
            let _ = self.flusher.send(());
            Ok(())
        } else {
            timed_sync(&self.wal, &self.fsync)
        }
    }

    /// PLANTED BUG (feature `ack-before-fsync`, robustness suite only):
    /// every append is reported durable at once; its records are written
    /// (and fsynced) by the flusher's lazy sync (see `wal::planted`).
    #[cfg(feature = "ack-before-fsync")]
    fn reports_before_fsync(&self, _: &[Entry]) -> bool {
        true
    }

    #[cfg(not(feature = "ack-before-fsync"))]
    fn reports_before_fsync(&self, entries: &[Entry]) -> bool {
        self.leader
            .is_some_and(|me| leader_appends_own(me, self.wal.vote(), entries))
    }

    /// The log, for readers outside openraft (elections compare last log ids).
    pub fn wal(&self) -> Arc<Wal> {
        self.wal.clone()
    }
}

/// Opens the log, first moving a format-1 database's log (kept in redb's
/// `raft_log` table) into it.
fn open_wal(store: &Store, dir: &Path) -> Result<Wal, super::StorageError> {
    if !store.log_in_database()? {
        return Ok(Wal::open(dir)?);
    }
    // Start from an empty directory: a crash during a previous migration
    // may have left part of one behind, and the table is still whole.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|source| super::StorageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let wal = Wal::open(dir)?;
    let (vote, purged, entries) = {
        let txn = store.db().begin_read()?;
        let meta = txn.open_table(META)?;
        let vote: Option<Vote> = meta_rmp(&meta, meta_key::VOTE)?;
        let purged: Option<LogId> = meta_rmp(&meta, meta_key::LAST_PURGED)?;
        let log = txn.open_table(RAFT_LOG)?;
        let mut entries = Vec::new();
        for item in log.iter()? {
            let (_, raw) = item?;
            let entry: Entry = rmp_serde::from_slice(raw.value())
                .map_err(|e| super::StorageError::corrupt("raft log entry", e))?;
            entries.push(entry);
        }
        (vote, purged, entries)
    };
    if let Some(vote) = vote {
        wal.save_vote(&vote)?;
    }
    if let Some(purged) = purged {
        wal.purge(purged)?;
    }
    wal.append(&entries)?;
    wal.sync()?;
    store.finish_log_migration()?;
    tracing::info!(
        entries = entries.len(),
        "moved the raft log out of the database into {}",
        dir.display()
    );
    Ok(wal)
}

/// The state machine may be durable past the end of the log: a leader
/// commits an entry once a quorum of followers has it, its own fsync of
/// that entry may not have happened before a crash, while a background
/// checkpoint of the state machine did. The entries up to the applied index
/// are then in the state machine already: the log is purged up to it, as
/// after a snapshot, so it never ends before what is applied.
fn reconcile(store: &Store, wal: &Wal) -> Result<(), super::StorageError> {
    let applied: Option<LogId> = {
        let txn = store.db().begin_read()?;
        let meta = txn.open_table(META)?;
        meta_rmp(&meta, meta_key::APPLIED)?
    };
    let (purged, last) = wal.log_state();
    if let Some(applied) = applied {
        if last.is_none_or(|last| last.index < applied.index) {
            tracing::warn!(%applied, last = ?last, "the log ends before the applied index; purging it up to there");
            wal.purge(applied)?;
        }
    } else if purged.is_some() {
        // Purging only ever follows a durable state machine.
        return Err(super::StorageError::corrupt(
            "raft log",
            "purged, while the state machine applied nothing",
        ));
    }
    Ok(())
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

fn io_err(e: WalError, f: fn(&WalError) -> StorageIOError<NodeId>) -> StorageError {
    StorageError::IO { source: f(&e) }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let lo = range.start_bound().cloned();
        let hi = range.end_bound().cloned();
        inline(|| self.wal.read(lo, hi)).map_err(|e| io_err(e, |e| StorageIOError::read_logs(e)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let (last_purged_log_id, last_log_id) = self.wal.log_state();
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        inline(|| self.wal.save_vote(vote))
            .map_err(|e| io_err(e, |e| StorageIOError::write_vote(e)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.wal.vote().map(forget_leadership))
    }

    // The committed index is not saved: the state machine keeps its own
    // applied index durably, and a restarted member learns what is committed
    // from the leader. (openraft's default `save_committed` does nothing.)

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
        let written = self.write(&entries);
        callback.log_io_completed(match &written {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        });
        written.map_err(|e| io_err(e, |e| StorageIOError::write_logs(e)))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        inline(|| self.wal.truncate(log_id.index))
            .map_err(|e| io_err(e, |e| StorageIOError::write_logs(e)))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        inline(|| self.wal.purge(log_id)).map_err(|e| io_err(e, |e| StorageIOError::write_logs(e)))
    }
}

/// Whether `entries` are the fresh entries of member `me` leading under
/// `vote`: a committed vote of its own, and every entry proposed under it.
/// A follower's entries, or a former leader's replayed to it, are not.
/// Nor is a membership change: its entry must be durable on the leader
/// before openraft counts it committed and proposes the next step.
fn leader_appends_own(me: NodeId, vote: Option<Vote>, entries: &[Entry]) -> bool {
    vote.is_some_and(|v| {
        v.committed
            && v.leader_id.node_id == me
            && entries.iter().all(|e| {
                e.log_id.leader_id == v.leader_id
                    && !matches!(e.payload, openraft::EntryPayload::Membership(_))
            })
    })
}

/// Makes the leader's appends durable: one fdatasync for everything
/// appended while the previous one ran. A failure is published with the
/// log's durability (`Wal::sync`), and whatever waits on that reports it.
fn flush_loop(wal: Arc<Wal>, pending: std::sync::mpsc::Receiver<()>, fsync: Option<Histogram>) {
    while pending.recv().is_ok() {
        #[cfg(feature = "ack-before-fsync")]
        std::thread::sleep(std::time::Duration::from_millis(50));
        pending.try_iter().for_each(drop);
        let _ = timed_sync(&wal, &fsync);
    }
}

/// One fdatasync of the log, timed into `fsync` when it succeeds.
fn timed_sync(wal: &Wal, fsync: &Option<Histogram>) -> Result<(), WalError> {
    let started = std::time::Instant::now();
    let result = wal.sync();
    match (&result, fsync) {
        (Err(e), _) => tracing::error!(error = %e, "flushing the raft log failed"),
        (Ok(()), Some(fsync)) => fsync.observe(started.elapsed().as_secs_f64()),
        (Ok(()), None) => {}
    }
    result
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::storage::to_rmp;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// A data dir as a format-1 build left it: the log in the database.
    fn format_one_store(dir: &Path) -> Store {
        let store = Store::open(dir).unwrap();
        let txn = store.db().begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(
                meta_key::FORMAT_VERSION,
                FORMAT_LOG_IN_DATABASE_FOR_TESTS.to_le_bytes().as_slice(),
            )
            .unwrap();
            meta.insert(meta_key::VOTE, to_rmp(&Vote::new(4, 1)).as_slice())
                .unwrap();
            meta.insert(meta_key::LAST_PURGED, to_rmp(&id(2, 9)).as_slice())
                .unwrap();
            meta.insert(meta_key::APPLIED, to_rmp(&id(2, 9)).as_slice())
                .unwrap();
            let mut log = txn.open_table(RAFT_LOG).unwrap();
            for index in 10..=12 {
                let entry = Entry {
                    log_id: id(3, index),
                    payload: EntryPayload::Blank,
                };
                log.insert(index, to_rmp(&entry).as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        store
    }

    const FORMAT_LOG_IN_DATABASE_FOR_TESTS: u32 = 1;

    #[test]
    fn a_format_one_log_moves_out_of_the_database_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = format_one_store(dir.path());
        assert!(store.log_in_database().unwrap());
        let logs = LogStore::open(&store, None).unwrap();
        let wal = logs.wal();
        assert_eq!(wal.log_state(), (Some(id(2, 9)), Some(id(3, 12))));
        assert_eq!(wal.vote(), Some(Vote::new(4, 1)));
        let read: Vec<LogId> = wal
            .read(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
            .unwrap()
            .into_iter()
            .map(|e| e.log_id)
            .collect();
        assert_eq!(read, vec![id(3, 10), id(3, 11), id(3, 12)]);
        assert!(!store.log_in_database().unwrap());
        let txn = store.db().begin_read().unwrap();
        assert!(txn.open_table(RAFT_LOG).is_err(), "the old table is gone");
        assert!(
            txn.open_table(META)
                .unwrap()
                .get(meta_key::VOTE)
                .unwrap()
                .is_none()
        );
        drop(txn);
        drop((logs, wal, store));
        // A second start finds the log where the first one put it.
        let store = Store::open(dir.path()).unwrap();
        let logs = LogStore::open(&store, None).unwrap();
        assert_eq!(logs.wal().log_state(), (Some(id(2, 9)), Some(id(3, 12))));
    }

    #[test]
    fn a_log_that_ends_before_the_applied_index_is_purged_up_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let txn = store.db().begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(meta_key::APPLIED, to_rmp(&id(5, 40)).as_slice())
            .unwrap();
        txn.commit().unwrap();
        let logs = LogStore::open(&store, None).unwrap();
        assert_eq!(logs.wal().log_state(), (Some(id(5, 40)), Some(id(5, 40))));
    }

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

    fn own_entries(term: u64, node: NodeId, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes
            .map(|index| Entry {
                log_id: LogId::new(CommittedLeaderId::new(term, node), index),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    #[test]
    fn only_a_leaders_fresh_entries_skip_waiting_for_the_fsync() {
        let leader = Some(Vote::new_committed(3, 1));
        assert!(leader_appends_own(1, leader, &own_entries(3, 1, 5..=6)));
        // A follower of member 1, or a member that only asks for votes.
        assert!(!leader_appends_own(2, leader, &own_entries(3, 1, 5..=6)));
        assert!(!leader_appends_own(
            1,
            Some(Vote::new(3, 1)),
            &own_entries(3, 1, 5..=6)
        ));
        assert!(!leader_appends_own(1, None, &own_entries(3, 1, 5..=6)));
        // Its own entries of an earlier term, sent back by a later leader.
        assert!(!leader_appends_own(1, leader, &own_entries(2, 1, 5..=6)));
        let mut change = own_entries(3, 1, 7..=7);
        change[0].payload = EntryPayload::Membership(openraft::Membership::new(
            vec![[1u64].into_iter().collect()],
            None,
        ));
        assert!(!leader_appends_own(1, leader, &change));
    }

    #[tokio::test]
    async fn a_followers_append_returns_durable_and_a_leaders_before_its_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let logs = LogStore::open(&store, None).unwrap().leading_as(1);
        let durable = logs.durable();

        // Following member 2: durable when `write` returns.
        inline(|| logs.wal.save_vote(&Vote::new_committed(2, 2))).unwrap();
        logs.write(&own_entries(2, 2, 1..=3)).unwrap();
        assert_eq!(durable.upto().map(|d| d.index), Some(3));

        // Leading: `write` hands the fsync to the flusher, which makes it
        // durable a moment later. (With no flusher to wake, it stays not.)
        inline(|| logs.wal.save_vote(&Vote::new_committed(3, 1))).unwrap();
        let (idle, woken) = std::sync::mpsc::channel();
        let unflushed = LogStore {
            flusher: idle,
            ..logs.clone()
        };
        unflushed.write(&own_entries(3, 1, 4..=5)).unwrap();
        assert_eq!(woken.try_recv(), Ok(()));
        assert_eq!(durable.upto().map(|d| d.index), Some(3));
        logs.write(&own_entries(3, 1, 6..=6)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), durable.wait_for(6))
            .await
            .expect("the flusher makes it durable")
            .unwrap();
    }
}
