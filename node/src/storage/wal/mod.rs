//! The Raft log and vote in append-only segment files: the member's only
//! fsync on the write path.
//!
//! An append writes the entries' records at the end of the active segment
//! (readable at once); `sync` makes everything written so far durable with
//! one fdatasync, so appends that arrive while a sync runs share the next
//! one. The state machine lives in redb and is committed without fsync;
//! redb is made durable in the background (`storage::checkpoint`) and the
//! log is never purged past the state machine's durable applied index, so
//! after a crash the member replays the log from wherever redb got to.
//!
//! On disk, in `<data-dir>/member/wal/`: segment files named by their first
//! index (`segment.rs`), each a sequence of records (`record.rs`) holding
//! one MessagePack-encoded entry; `vote` and `purged` markers
//! (`marker.rs`). Invariants, checked when the log is opened:
//! - the entries after the purge point have consecutive indexes, across
//!   segments, starting right after it;
//! - only the last segment may end in a torn record (a crash mid-append);
//!   it is cut off there, since the append it belonged to was never
//!   reported durable. Anywhere else a bad record is damage: opening fails.

pub mod durable;
pub mod marker;
pub mod record;
pub mod segment;

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Bound;
#[cfg(not(feature = "ack-before-fsync"))]
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use self::durable::{Durability, DurableLog};
use self::segment::{Next, SEGMENT_BYTES, Scanner};
use crate::raft::types::{Entry, LogId, Vote};

const VOTE: &str = "vote";
const PURGED: &str = "purged";

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("raft log {what} ({path}): {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("raft log in {path} is damaged: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("raft log: appending entry {found} after {expected_after:?}")]
    OutOfOrder {
        found: u64,
        expected_after: Option<u64>,
    },
}

struct Segment {
    first_index: u64,
    path: PathBuf,
    file: Arc<File>,
}

/// Where one entry's record is.
#[derive(Clone)]
struct Loc {
    log_id: LogId,
    file: Arc<File>,
    offset: u64,
    len: usize,
}

struct State {
    /// Oldest first; the last one is where appends go.
    segments: Vec<Segment>,
    /// Every entry after the purge point, in index order.
    entries: VecDeque<Loc>,
    purged: Option<LogId>,
    /// End of the last record in the active segment.
    write_offset: u64,
    vote: Option<Vote>,
    /// PLANTED BUG (feature `ack-before-fsync`): records not yet written,
    /// and their entries for readers.
    #[cfg(feature = "ack-before-fsync")]
    unwritten: planted::Unwritten,
}

/// A member's Raft log.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    /// How far the log is on disk; changed only with `state` locked, so it
    /// never names an entry a truncation removed.
    durable: watch::Sender<Durability>,
}

impl Wal {
    /// Opens the log in `dir` (creating it), checking and repairing it as
    /// the module comment says.
    pub fn open(dir: &Path) -> Result<Wal, WalError> {
        Self::open_with_segment_bytes(dir, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with segments of `segment_bytes` (tests rotate early).
    pub fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory", dir, e))?;
        let corrupt = |detail: String| WalError::Corrupt {
            path: dir.to_path_buf(),
            detail,
        };
        let vote = marker::read(dir, VOTE)
            .map_err(&corrupt)?
            .map(|raw| {
                rmp_serde::from_slice::<Vote>(&raw).map_err(|e| corrupt(format!("vote: {e}")))
            })
            .transpose()?;
        let purged = marker::read(dir, PURGED)
            .map_err(&corrupt)?
            .map(|raw| {
                rmp_serde::from_slice::<LogId>(&raw).map_err(|e| corrupt(format!("purged: {e}")))
            })
            .transpose()?;
        let files = segment::list(dir).map_err(|e| io("listing segments", dir, e))?;
        let mut segments = Vec::new();
        let mut entries: VecDeque<Loc> = VecDeque::new();
        let mut write_offset = 0;
        let count = files.len();
        for (n, (first_index, path)) in files.into_iter().enumerate() {
            let file = Arc::new(segment::open(&path).map_err(|e| io("opening", &path, e))?);
            let reader = file.try_clone().map_err(|e| io("opening", &path, e))?;
            let mut scanner = Scanner::new(reader);
            let mut expected = first_index;
            let end = loop {
                match scanner.next_record().map_err(|e| io("reading", &path, e))? {
                    Next::Record { offset, payload } => {
                        let entry: Entry = rmp_serde::from_slice(&payload).map_err(|e| {
                            corrupt(format!("{}: entry at offset {offset}: {e}", path.display()))
                        })?;
                        if entry.log_id.index != expected {
                            return Err(corrupt(format!(
                                "{}: entry {} where {expected} belongs",
                                path.display(),
                                entry.log_id.index
                            )));
                        }
                        expected += 1;
                        if purged.is_some_and(|p| entry.log_id.index <= p.index) {
                            continue;
                        }
                        if let Some(prev) = entries.back()
                            && prev.log_id.index + 1 != entry.log_id.index
                        {
                            return Err(corrupt(format!(
                                "{}: entry {} follows entry {}",
                                path.display(),
                                entry.log_id.index,
                                prev.log_id.index
                            )));
                        }
                        entries.push_back(Loc {
                            log_id: entry.log_id,
                            file: file.clone(),
                            offset,
                            len: payload.len(),
                        });
                    }
                    Next::End { offset } => break offset,
                    Next::Torn { offset, why } if n + 1 == count => {
                        // The append this record belonged to was never
                        // reported durable: forget it.
                        tracing::warn!(segment = %path.display(), offset, %why, "cutting a torn record off the raft log");
                        segment::cut(&file, offset, segment_bytes)
                            .map_err(|e| io("repairing", &path, e))?;
                        break offset;
                    }
                    Next::Torn { offset, why } => {
                        return Err(corrupt(format!(
                            "{}: {why} at offset {offset}, before the last segment",
                            path.display()
                        )));
                    }
                }
            };
            write_offset = end;
            segments.push(Segment {
                first_index,
                path,
                file,
            });
        }
        if let (Some(first), Some(purged)) = (entries.front(), purged)
            && first.log_id.index != purged.index + 1
        {
            return Err(corrupt(format!(
                "the log resumes at entry {} after purging up to {}",
                first.log_id.index, purged.index
            )));
        }
        let state = State {
            segments,
            entries,
            purged,
            write_offset,
            vote,
            #[cfg(feature = "ack-before-fsync")]
            unwritten: Default::default(),
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: Mutex::new(state),
            durable: watch::Sender::new(Durability::default()),
        };
        {
            let mut state = wal.state();
            if state.segments.is_empty() {
                wal.start_segment(&mut state, purged.map_or(0, |p| p.index + 1))?;
            }
            // Records written before a crash of the process, not of the
            // machine, are still in the page cache: on disk from here on.
            let active = state.active();
            active
                .file
                .sync_data()
                .map_err(|e| io("syncing", &active.path, e))?;
            let upto = state.last();
            wal.durable.send_replace(Durability {
                upto,
                failed: false,
            });
        }
        Ok(wal)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind:
        // every mutation is applied after its I/O succeeded.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last purged log id and the last log id (appended, maybe not yet
    /// durable), as openraft's `LogState` wants them.
    pub fn log_state(&self) -> (Option<LogId>, Option<LogId>) {
        let state = self.state();
        (state.purged, state.last())
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.state().last()
    }

    pub fn vote(&self) -> Option<Vote> {
        self.state().vote
    }

    /// Records the vote durably before returning.
    pub fn save_vote(&self, vote: &Vote) -> Result<(), WalError> {
        let mut state = self.state();
        marker::write(&self.dir, VOTE, &super::to_rmp(vote))
            .map_err(|e| io("saving the vote", &self.dir, e))?;
        state.vote = Some(*vote);
        Ok(())
    }

    /// Writes `entries` after the last one. They are readable at once and
    /// durable after the next [`Wal::sync`].
    pub fn append(&self, entries: &[Entry]) -> Result<(), WalError> {
        let mut state = self.state();
        let mut pending = Vec::new();
        let mut placed: Vec<(LogId, u64, usize)> = Vec::new();
        let mut after = state.last().map(|l| l.index);
        for entry in entries {
            let index = entry.log_id.index;
            match after {
                Some(last) if index != last + 1 => {
                    return Err(WalError::OutOfOrder {
                        found: index,
                        expected_after: after,
                    });
                }
                _ => {}
            }
            let payload = super::to_rmp(entry);
            #[cfg(feature = "ack-before-fsync")]
            state.unwritten.keep(entry);
            let start = state.write_offset + pending.len() as u64;
            let record_bytes = (record::HEADER_BYTES + payload.len()) as u64;
            let empty_active = start == 0;
            if empty_active && state.active().first_index != index {
                // A fresh log whose first entry is not the one the empty
                // segment was named for.
                let old = state.segments.pop();
                self.remove(old.into_iter().collect())?;
                self.start_segment(&mut state, index)?;
            } else if !empty_active && start + record_bytes > self.segment_bytes {
                state.write_at_end(&pending, &mut placed)?;
                pending.clear();
                // The flusher only syncs the active segment: the full one
                // is made durable before appends move on.
                let full = state.active();
                full.file
                    .sync_data()
                    .map_err(|e| io("syncing", &full.path, e))?;
                self.start_segment(&mut state, index)?;
            }
            let offset = state.write_offset + pending.len() as u64;
            record::encode(&payload, &mut pending);
            placed.push((entry.log_id, offset, payload.len()));
            after = Some(index);
        }
        state.write_at_end(&pending, &mut placed)?;
        // PLANTED BUG (feature `ack-before-fsync`): the records count as
        // durable at once, for whatever waits on that too.
        #[cfg(feature = "ack-before-fsync")]
        self.raise_durable(state.last());
        Ok(())
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> Result<(), WalError> {
        let (file, path, last) = {
            #[cfg_attr(not(feature = "ack-before-fsync"), allow(unused_mut))]
            let mut state = self.state();
            #[cfg(feature = "ack-before-fsync")]
            state
                .unwritten
                .write_out()
                .map_err(|e| io("appending", &self.dir, e))?;
            let active = state.active();
            (active.file.clone(), active.path.clone(), state.last())
        };
        if let Err(e) = file.sync_data() {
            self.durable.send_modify(|d| d.failed = true);
            return Err(io("syncing", &path, e));
        }
        let state = self.state();
        // Unless a truncation took `last` away meanwhile (a follower's log
        // conflicting with a new leader's): then the next sync tells.
        if last.is_some_and(|l| state.log_id_at(l.index) == Some(l)) {
            self.raise_durable(last);
        }
        Ok(())
    }

    /// Waits on how far the log is durable.
    pub fn durable(&self) -> DurableLog {
        DurableLog::new(self.durable.subscribe())
    }

    fn raise_durable(&self, to: Option<LogId>) {
        self.durable.send_if_modified(|d| {
            let higher = to.map(|t| t.index) > d.upto.map(|u| u.index);
            if higher {
                d.upto = to;
            }
            higher
        });
    }

    /// The entries with indexes in the range that the log holds.
    pub fn read(&self, lo: Bound<u64>, hi: Bound<u64>) -> Result<Vec<Entry>, WalError> {
        let locs: Vec<Loc> = {
            let state = self.state();
            let Some(front) = state.entries.front() else {
                return Ok(Vec::new());
            };
            let base = front.log_id.index;
            let len = state.entries.len() as u64;
            let start = match lo {
                Bound::Included(i) => i.saturating_sub(base),
                Bound::Excluded(i) => (i.saturating_add(1)).saturating_sub(base),
                Bound::Unbounded => 0,
            }
            .min(len);
            let end = match hi {
                Bound::Included(i) => i.saturating_add(1).saturating_sub(base),
                Bound::Excluded(i) => i.saturating_sub(base),
                Bound::Unbounded => len,
            }
            .min(len);
            if start >= end {
                return Ok(Vec::new());
            }
            state
                .entries
                .range(start as usize..end as usize)
                .cloned()
                .collect()
        };
        locs.iter()
            .map(|loc| {
                #[cfg(feature = "ack-before-fsync")]
                if let Some(entry) = self.state().unwritten.get(loc.log_id.index) {
                    return Ok(entry);
                }
                let payload = segment::read_payload(&loc.file, loc.offset, loc.len)
                    .map_err(|detail| self.corrupt(detail))?;
                let entry: Entry = rmp_serde::from_slice(&payload)
                    .map_err(|e| self.corrupt(format!("entry {}: {e}", loc.log_id.index)))?;
                if entry.log_id != loc.log_id {
                    return Err(self.corrupt(format!(
                        "entry {} reads back as {}",
                        loc.log_id, entry.log_id
                    )));
                }
                Ok(entry)
            })
            .collect()
    }

    /// Removes the entry at `index` and every later one (a follower's log
    /// that conflicts with its leader's), durably.
    pub fn truncate(&self, index: u64) -> Result<(), WalError> {
        let mut state = self.state();
        #[cfg(feature = "ack-before-fsync")]
        state
            .unwritten
            .write_out()
            .map_err(|e| io("appending", &self.dir, e))?;
        let Some(front) = state.entries.front() else {
            return Ok(());
        };
        let pos = index.saturating_sub(front.log_id.index) as usize;
        let Some(cut_at) = state.entries.get(pos).cloned() else {
            return Ok(());
        };
        let keep = state
            .segments
            .iter()
            .position(|s| Arc::ptr_eq(&s.file, &cut_at.file))
            .ok_or_else(|| self.corrupt(format!("entry {index} is in no segment")))?;
        let dropped: Vec<Segment> = state.segments.drain(keep + 1..).collect();
        segment::cut(&cut_at.file, cut_at.offset, self.segment_bytes)
            .map_err(|e| io("truncating", &state.segments[keep].path, e))?;
        state.write_offset = cut_at.offset;
        state.entries.truncate(pos);
        let last = state.last();
        self.durable.send_if_modified(|d| {
            let lower = d.upto.map(|u| u.index) > last.map(|l| l.index);
            if lower {
                d.upto = last;
            }
            lower
        });
        self.remove(dropped)
    }

    /// Forgets every entry up to `upto`, which the state machine holds
    /// durably, and removes the segments that hold nothing else.
    pub fn purge(&self, upto: LogId) -> Result<(), WalError> {
        let mut state = self.state();
        #[cfg(feature = "ack-before-fsync")]
        state
            .unwritten
            .write_out()
            .map_err(|e| io("appending", &self.dir, e))?;
        if state.purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        let last = state.last();
        // The marker first: should a crash come before the files are gone,
        // the entries they hold are skipped as purged when the log opens.
        marker::write(&self.dir, PURGED, &super::to_rmp(&upto))
            .map_err(|e| io("recording the purge point", &self.dir, e))?;
        state.purged = Some(upto);
        // The state machine holds what is purged durably.
        self.raise_durable(Some(upto));
        while state
            .entries
            .front()
            .is_some_and(|l| l.log_id.index <= upto.index)
        {
            state.entries.pop_front();
        }
        let dropped: Vec<Segment> = match state.entries.front().cloned() {
            Some(first) => {
                let keep = state
                    .segments
                    .iter()
                    .position(|s| Arc::ptr_eq(&s.file, &first.file))
                    .unwrap_or(0);
                state.segments.drain(..keep).collect()
            }
            // The log ended exactly at `upto`: the next entry follows on in
            // the active segment.
            None if last.is_some_and(|l| l.index == upto.index) => {
                let active = state.segments.len() - 1;
                state.segments.drain(..active).collect()
            }
            // The log ends before `upto` (a snapshot came from the leader):
            // the next entry is `upto + 1`, which no segment can continue.
            None => {
                let old: Vec<Segment> = state.segments.drain(..).collect();
                self.remove(old)?;
                return self.start_segment(&mut state, upto.index + 1);
            }
        };
        self.remove(dropped)
    }

    fn remove(&self, segments: Vec<Segment>) -> Result<(), WalError> {
        if segments.is_empty() {
            return Ok(());
        }
        for s in &segments {
            std::fs::remove_file(&s.path).map_err(|e| io("removing", &s.path, e))?;
        }
        segment::sync_dir(&self.dir).map_err(|e| io("syncing the directory", &self.dir, e))
    }

    fn start_segment(&self, state: &mut State, first_index: u64) -> Result<(), WalError> {
        let (path, file) =
            segment::create(&self.dir, first_index, self.segment_bytes).map_err(|e| {
                io(
                    "creating a segment",
                    &self.dir.join(segment::file_name(first_index)),
                    e,
                )
            })?;
        state.segments.push(Segment {
            first_index,
            path,
            file: Arc::new(file),
        });
        state.write_offset = 0;
        Ok(())
    }

    fn corrupt(&self, detail: String) -> WalError {
        WalError::Corrupt {
            path: self.dir.clone(),
            detail,
        }
    }
}

impl State {
    fn last(&self) -> Option<LogId> {
        self.entries.back().map(|l| l.log_id).or(self.purged)
    }

    /// The id of the entry at `index`, if the log holds it.
    fn log_id_at(&self, index: u64) -> Option<LogId> {
        let first = self.entries.front()?.log_id.index;
        let pos = index.checked_sub(first)?;
        self.entries.get(pos as usize).map(|l| l.log_id)
    }

    fn active(&self) -> &Segment {
        // `open` and every change leave at least one segment.
        self.segments
            .last()
            .expect("the raft log has an active segment")
    }

    /// Writes encoded records at the end of the active segment, then
    /// records where the entries in `placed` are.
    fn write_at_end(
        &mut self,
        records: &[u8],
        placed: &mut Vec<(LogId, u64, usize)>,
    ) -> Result<(), WalError> {
        if records.is_empty() {
            return Ok(());
        }
        let active = self.active();
        let file = active.file.clone();
        #[cfg(feature = "ack-before-fsync")]
        self.unwritten
            .hold(file.clone(), self.write_offset, records.to_vec());
        #[cfg(not(feature = "ack-before-fsync"))]
        file.write_all_at(records, self.write_offset)
            .map_err(|e| io("appending to", &active.path, e))?;
        self.write_offset += records.len() as u64;
        for (log_id, offset, len) in placed.drain(..) {
            self.entries.push_back(Loc {
                log_id,
                file: file.clone(),
                offset,
                len,
            });
        }
        Ok(())
    }
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> WalError {
    WalError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// PLANTED BUG (feature `ack-before-fsync`, robustness suite only): appends
/// stay in memory until the next sync, which the log store runs lazily
/// while reporting every append durable at once. A `kill -9` then loses
/// acknowledged writes. (Skipping only the fdatasync would not show: the
/// written page cache outlives a killed process; only a power cut loses
/// it, which the suite cannot cause.)
#[cfg(feature = "ack-before-fsync")]
mod planted {
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    use crate::raft::types::Entry;

    #[derive(Default)]
    pub struct Unwritten {
        records: Vec<(Arc<File>, u64, Vec<u8>)>,
        entries: BTreeMap<u64, Entry>,
    }

    impl Unwritten {
        pub fn keep(&mut self, entry: &Entry) {
            self.entries.insert(entry.log_id.index, entry.clone());
        }

        pub fn hold(&mut self, file: Arc<File>, offset: u64, records: Vec<u8>) {
            self.records.push((file, offset, records));
        }

        pub fn get(&self, index: u64) -> Option<Entry> {
            self.entries.get(&index).cloned()
        }

        pub fn write_out(&mut self) -> std::io::Result<()> {
            for (file, offset, records) in self.records.drain(..) {
                file.write_all_at(&records, offset)?;
            }
            self.entries.clear();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
