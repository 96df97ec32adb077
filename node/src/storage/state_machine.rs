//! The replicated state machine (openraft's `RaftStateMachine`): applies
//! committed batches to the MVCC tables, builds and installs snapshots.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use prost::Message;
use redb::{Durability, ReadableTable};

use super::snapshot_file::{RaftSnapshotFile, SnapDir, TempPath};
use super::snapshot_rows::{TableLoader, visit_rows};
use super::snapshot_stream::{StreamError, StreamHeader, StreamReader, StreamWriter};
use super::wal::durable::DurableLog;
use super::{
    ALARMS, AUTH, KV_RECORDS, LEASE_KEYS, LEASES, MEMBERS, META, SNAPSHOT, Store, blocking, inline,
    meta_i64, meta_key, meta_rmp, to_rmp,
};
use crate::auth::state::AuthState;
use crate::auth::{self, AuthEffects, AuthStore};
use crate::hub::{ApplyHub, ApplyNotice};
use crate::lease::lessor::Lessor;
use crate::mvcc::alarm::{ActiveAlarms, AlarmChange};
use crate::mvcc::apply::{Applier, ApplyError, LeaseChange};
use crate::mvcc::index::KeyIndex;
use crate::proto::etcdserverpb::{
    AlarmResponse, CompactionResponse, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, ResponseHeader, TxnResponse,
};
use crate::proto::witanpb::internal_request::Request;
use crate::proto::witanpb::internal_response::Response;
use crate::proto::witanpb::{AuthApplied, InternalRequest, InternalResponse};
use crate::raft::types::{
    BatchResponse, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The state machine half of a member's database.
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    /// `<data-dir>/member/snap`: the Raft snapshot files.
    snap: SnapDir,
    hub: ApplyHub,
    lessor: Arc<Lessor>,
    /// The member's in-memory auth state, replaced when an apply or a
    /// snapshot changes it.
    auth: Arc<AuthStore>,
    /// Times each apply transaction's commit, when set.
    commit_timer: Option<prometheus::Histogram>,
    /// When set, an entry is applied only once the log holds it durably:
    /// a leader's own entries can count as committed before its fsync
    /// ended (`wal::durable`).
    durable_log: Option<DurableLog>,
}

/// What an applied batch tells the rest of the member.
struct Applied {
    responses: Vec<BatchResponse>,
    notice: ApplyNotice,
    lease_changes: Vec<LeaseChange>,
    /// The new auth state, when the batch changed it.
    auth_state: Option<Arc<AuthState>>,
    auth_effects: AuthEffects,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl StateMachine {
    /// Opens the state machine and loads lease deadlines from storage.
    pub fn new(
        store: Store,
        hub: ApplyHub,
        lessor: Arc<Lessor>,
        auth: Arc<AuthStore>,
    ) -> Result<Self, super::StorageError> {
        let snap_dir = match store.path().parent() {
            Some(member_dir) => member_dir.join("snap"),
            None => std::path::PathBuf::from("snap"),
        };
        let snap = SnapDir::open(snap_dir.clone()).map_err(|source| super::StorageError::Io {
            path: snap_dir,
            source,
        })?;
        let sm = StateMachine {
            store,
            snap,
            hub,
            lessor,
            auth,
            commit_timer: None,
            durable_log: None,
        };
        sm.drop_legacy_snapshot()?;
        let leases = sm.lease_ttls()?;
        sm.lessor.reset(leases, Instant::now());
        Ok(sm)
    }

    /// Empties redb's `snapshot` table, where snapshots lived before they
    /// became files: a data dir from an older build may hold a whole image
    /// there, which nothing reads any more.
    fn drop_legacy_snapshot(&self) -> Result<(), super::StorageError> {
        let has_rows = {
            let txn = self.store.db().begin_read()?;
            match txn.open_table(SNAPSHOT) {
                Ok(table) => table.first()?.is_some(),
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(e.into()),
            }
        };
        if has_rows {
            let txn = self.store.db().begin_write()?;
            txn.delete_table(SNAPSHOT)?;
            txn.commit()?;
            tracing::info!("removed the snapshot kept in redb by an older build");
        }
        Ok(())
    }

    fn io_err(&self, source: std::io::Error) -> super::StorageError {
        super::StorageError::Io {
            path: self.snap.path().to_path_buf(),
            source,
        }
    }

    /// Applies entries only once `log` holds them durably.
    pub fn applying_what_is_durable_in(mut self, log: DurableLog) -> Self {
        self.durable_log = Some(log);
        self
    }

    /// Times each apply commit into `histogram` (etcd's backend commit).
    pub fn with_commit_histogram(mut self, histogram: prometheus::Histogram) -> Self {
        self.commit_timer = Some(histogram);
        self
    }

    fn lease_ttls(&self) -> Result<Vec<(i64, i64)>, super::StorageError> {
        let txn = self.store.db().begin_read()?;
        let mut out = Vec::new();
        for item in txn.open_table(LEASES)?.iter()? {
            let (id, raw) = item?;
            let record = crate::proto::witanpb::LeaseRecord::decode(raw.value())
                .map_err(|e| super::StorageError::corrupt("lease record", e))?;
            out.push((id.value(), record.ttl));
        }
        Ok(out)
    }

    fn applied(&self) -> Result<(Option<LogId>, StoredMembership), super::StorageError> {
        let txn = self.store.db().begin_read()?;
        applied_in(&txn)
    }

    fn apply_entries(
        &self,
        entries: Vec<Entry>,
    ) -> Result<Vec<BatchResponse>, super::StorageError> {
        // Held until the commit: readers never see the index ahead of the
        // records, nor records the index does not name yet.
        let mut index = self.store.index_write();
        let applied = self.apply_locked(&mut index, entries);
        if applied.is_err() {
            // The transaction is gone; the index must forget its changes
            // too, or it would name records that were never written.
            if let Err(e) = self.store.rebuild_index(&mut index) {
                tracing::error!(error = %e, "rebuilding the key index after a failed apply");
            }
        }
        drop(index);
        let applied = applied?;
        if let Some(auth_state) = applied.auth_state {
            self.auth.install(auth_state);
        }
        self.auth.apply_effects(applied.auth_effects);
        let now = Instant::now();
        for change in applied.lease_changes {
            match change {
                LeaseChange::Granted { id, ttl_secs } => self.lessor.granted(id, ttl_secs, now),
                LeaseChange::Revoked { id } => self.lessor.revoked(id),
            }
        }
        self.hub.publish(applied.notice);
        Ok(applied.responses)
    }

    /// Applies `entries` in one redb transaction while the caller holds
    /// the index's write lock; returns what to tell the rest of the member
    /// once the lock is released.
    fn apply_locked(
        &self,
        index: &mut KeyIndex,
        entries: Vec<Entry>,
    ) -> Result<Applied, super::StorageError> {
        let mut txn = self.store.db().begin_write()?;
        // Not fsynced here: the log already is, and the next log append's
        // fsync makes this commit durable too. A crash replays from the
        // applied id stored below.
        txn.set_durability(Durability::None)
            .map_err(|e| super::StorageError::corrupt("durability", e))?;
        let mut responses = Vec::with_capacity(entries.len());
        let auth_before = self.auth.state();
        let mut auth_state = auth_before.clone();
        let mut auth_effects = AuthEffects::default();
        let (events, lease_changes, revision) = {
            let mut meta = txn.open_table(META)?;
            let revision = meta_i64(&meta, meta_key::REVISION)?.max(1);
            let compact_revision = meta_i64(&meta, meta_key::COMPACT_REVISION)?;
            let mut members = txn.open_table(MEMBERS)?;
            let mut alarm_table = txn.open_table(ALARMS)?;
            let mut alarms = ActiveAlarms::load(&alarm_table)?;
            let mut applier = Applier::new(
                (index, txn.open_table(KV_RECORDS)?),
                (revision, compact_revision),
                txn.open_table(LEASES)?,
                txn.open_table(LEASE_KEYS)?,
            );
            let mut last_applied = None;
            let mut membership = None;
            for entry in entries {
                last_applied = Some(entry.log_id);
                let mut batch_responses = Vec::new();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(batch) => {
                        for request in &batch.0 {
                            batch_responses.push(apply_one(
                                &mut applier,
                                &mut members,
                                (&mut alarm_table, &mut alarms),
                                (&mut auth_state, &mut auth_effects),
                                request,
                            )?);
                        }
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    }
                }
                responses.push(BatchResponse(batch_responses));
            }
            if let Some(applied) = last_applied {
                meta.insert(meta_key::APPLIED, to_rmp(&applied).as_slice())?;
            }
            if let Some(membership) = membership {
                meta.insert(meta_key::MEMBERSHIP, to_rmp(&membership).as_slice())?;
            }
            if !Arc::ptr_eq(&auth_state, &auth_before) {
                auth::save(&mut txn.open_table(AUTH)?, &auth_state)?;
            }
            meta.insert(
                meta_key::REVISION,
                applier.revision.to_le_bytes().as_slice(),
            )?;
            meta.insert(
                meta_key::COMPACT_REVISION,
                applier.compact_revision.to_le_bytes().as_slice(),
            )?;
            (
                std::mem::take(&mut applier.events),
                std::mem::take(&mut applier.lease_changes),
                applier.revision,
            )
        };
        let started = Instant::now();
        txn.commit()?;
        if let Some(timer) = &self.commit_timer {
            timer.observe(started.elapsed().as_secs_f64());
        }
        tracing::trace!(revision, "applied batch");
        Ok(Applied {
            responses,
            notice: ApplyNotice {
                revision,
                events,
                reset: false,
            },
            lease_changes,
            auth_state: (!Arc::ptr_eq(&auth_state, &auth_before)).then_some(auth_state),
            auth_effects,
        })
    }

    /// Streams every state-machine table, as of one read transaction, to a
    /// new snapshot file, one row at a time.
    fn build(&self) -> Result<Snapshot, super::StorageError> {
        let (file, temp) = self.snap.create_temp().map_err(|e| self.io_err(e))?;
        let txn = self.store.db().begin_read()?;
        let (applied, membership) = applied_in(&txn)?;
        let snapshot_id = match applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term,
                id.index,
                rand::random::<u32>()
            ),
            None => format!("0-0-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let header = {
            let table = txn.open_table(META)?;
            StreamHeader {
                revision: meta_i64(&table, meta_key::REVISION)?,
                compact_revision: meta_i64(&table, meta_key::COMPACT_REVISION)?,
                meta: meta.clone(),
            }
        };
        let mut file = self.write_stream(&txn, &header, file)?;
        drop(txn);
        // Durability rule: openraft purges the log up to this snapshot's
        // last log id as soon as this returns, but applies commit with
        // `Durability::None`, so the applies up to it may exist only in
        // memory. One durable commit after the read transaction above makes
        // every apply it saw durable, so a crash never leaves the state
        // machine behind a log that no longer holds the entries between.
        self.commit_durably()?;
        self.snap
            .publish(temp, applied)
            .map_err(|e| self.io_err(e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| self.io_err(e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(RaftSnapshotFile::complete(file)),
        })
    }

    /// Writes the stream of `txn`'s rows to `file` and fsyncs it.
    fn write_stream(
        &self,
        txn: &redb::ReadTransaction,
        header: &StreamHeader,
        file: File,
    ) -> Result<File, super::StorageError> {
        let mut writer =
            StreamWriter::new(BufWriter::with_capacity(STREAM_BUFFER_BYTES, file), header)
                .map_err(|e| self.io_err(e))?;
        visit_rows(txn, |row| writer.row(&row).map_err(|e| self.io_err(e)))?;
        let file = writer
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(|e| self.io_err(e))?;
        file.sync_all().map_err(|e| self.io_err(e))?;
        Ok(file)
    }

    /// An empty commit with `Durability::Immediate`: makes every earlier
    /// non-durable commit durable.
    fn commit_durably(&self) -> Result<(), super::StorageError> {
        let mut txn = self.store.db().begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| super::StorageError::corrupt("durability", e))?;
        txn.commit()?;
        Ok(())
    }

    /// Replaces every state-machine table with the rows of a received
    /// snapshot file in one durable transaction, then keeps the file as
    /// the current snapshot. A bad file (truncated, corrupt, another
    /// snapshot than `meta`) is refused and the store is left as it was.
    fn install(
        &self,
        meta: &SnapshotMeta,
        file: File,
        temp: Option<TempPath>,
    ) -> Result<(), super::StorageError> {
        // The received bytes must be on disk before the store depends on
        // them being the current snapshot.
        file.sync_all().map_err(|e| self.io_err(e))?;
        let stream_err = |e: StreamError| super::StorageError::corrupt("Raft snapshot", e);
        let (mut reader, header) =
            StreamReader::open(BufReader::with_capacity(STREAM_BUFFER_BYTES, file))
                .map_err(stream_err)?;
        if header.meta.last_log_id != meta.last_log_id
            || header.meta.snapshot_id != meta.snapshot_id
        {
            return Err(super::StorageError::corrupt(
                "Raft snapshot",
                format!(
                    "the file holds snapshot {} at {:?}, expected {} at {:?}",
                    header.meta.snapshot_id,
                    header.meta.last_log_id,
                    meta.snapshot_id,
                    meta.last_log_id
                ),
            ));
        }
        let mut txn = self.store.db().begin_write()?;
        // Durable for the same reason as `build`: the log is purged up to
        // this snapshot once it is installed.
        txn.set_durability(Durability::Immediate)
            .map_err(|e| super::StorageError::corrupt("durability", e))?;
        {
            let mut tables = TableLoader::open_emptied(&txn)?;
            while let Some(row) = reader.next_row().map_err(stream_err)? {
                tables.insert(&row)?;
            }
            tables.set_revisions(header.revision, header.compact_revision)?;
            let table = tables.meta();
            if let Some(applied) = meta.last_log_id {
                table.insert(meta_key::APPLIED, to_rmp(&applied).as_slice())?;
            }
            table.insert(
                meta_key::MEMBERSHIP,
                to_rmp(&meta.last_membership).as_slice(),
            )?;
            tables.finish()?;
        }
        // Readers see the old state or the new one, each with its index.
        let mut index = self.store.index_write();
        txn.commit()?;
        self.store.rebuild_index(&mut index)?;
        drop(index);
        if let Some(temp) = temp {
            self.snap
                .publish(temp, meta.last_log_id)
                .map_err(|e| self.io_err(e))?;
        }
        self.lessor.reset(self.lease_ttls()?, Instant::now());
        let txn = self.store.db().begin_read()?;
        let auth_state = auth::load(&txn)?;
        drop(txn);
        self.auth.install(Arc::new(auth_state));
        self.hub.publish(ApplyNotice {
            revision: header.revision,
            events: Vec::new(),
            reset: true,
        });
        tracing::info!(revision = header.revision, "installed snapshot");
        Ok(())
    }

    /// The newest snapshot file and its meta (read from its header). A
    /// file whose header does not decode is skipped with a warning: openraft
    /// then builds a new snapshot when it needs one.
    fn current_snapshot(&self) -> Result<Option<Snapshot>, super::StorageError> {
        let Some((mut file, path)) = self.snap.open_newest().map_err(|e| self.io_err(e))? else {
            return Ok(None);
        };
        let header = match StreamReader::open(BufReader::new(&file)) {
            Ok((_, header)) => header,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable snapshot file");
                return Ok(None);
            }
        };
        file.seek(SeekFrom::Start(0)).map_err(|e| self.io_err(e))?;
        Ok(Some(Snapshot {
            meta: header.meta,
            snapshot: Box::new(RaftSnapshotFile::complete(file)),
        }))
    }
}

/// Buffer between the snapshot stream and its file: large enough for few
/// system calls, small next to the store.
const STREAM_BUFFER_BYTES: usize = 256 * 1024;

/// The applied log id and membership recorded in `txn`.
fn applied_in(
    txn: &redb::ReadTransaction,
) -> Result<(Option<LogId>, StoredMembership), super::StorageError> {
    let meta = txn.open_table(META)?;
    let applied: Option<LogId> = meta_rmp(&meta, meta_key::APPLIED)?;
    let membership: Option<StoredMembership> = meta_rmp(&meta, meta_key::MEMBERSHIP)?;
    Ok((applied, membership.unwrap_or_default()))
}

/// Applies one request; a deterministic rejection (including one the active
/// alarms make) becomes an error response.
fn apply_one(
    applier: &mut Applier<'_>,
    members: &mut redb::Table<'_, u64, &'static [u8]>,
    (alarm_table, alarms): (&mut redb::Table<'_, (u64, i32), ()>, &mut ActiveAlarms),
    (auth_state, auth_effects): (&mut Arc<AuthState>, &mut AuthEffects),
    request: &InternalRequest,
) -> Result<InternalResponse, super::StorageError> {
    let refused = |err: crate::error::EtcdError| InternalResponse {
        response: Some(Response::Error(err.to_wire())),
    };
    if let Some(err) = alarms.refusal(request) {
        return Ok(refused(err));
    }
    if auth::apply::is_auth_request(request) {
        return Ok(
            match auth::apply::apply_auth_request(auth_state, auth_effects, request) {
                Ok(auth_revision) => InternalResponse {
                    response: Some(Response::Auth(AuthApplied { auth_revision })),
                },
                Err(err) => refused(err),
            },
        );
    }
    if auth_state.enabled && !request.internal {
        // The keys on a lease the request touches, for etcd's lease checks.
        let lease = match &request.request {
            Some(Request::Put(put)) if put.lease != 0 => Some(put.lease),
            Some(Request::LeaseRevoke(revoke)) => Some(revoke.id),
            _ => None,
        };
        let lease_keys = match lease {
            Some(id) => applier.lease_keys_of(id)?,
            None => Vec::new(),
        };
        if let Err(err) = auth::apply::check_write(auth_state, request, |_| lease_keys.clone()) {
            return Ok(refused(err));
        }
    }
    let result: Result<Response, ApplyError> = match &request.request {
        Some(Request::Put(req)) => applier.put(req).map(|r| {
            Response::Put(PutResponse {
                header: header(applier.revision),
                ..r
            })
        }),
        Some(Request::DeleteRange(req)) => applier.delete_range(req).map(|r| {
            Response::DeleteRange(DeleteRangeResponse {
                header: header(applier.revision),
                ..r
            })
        }),
        Some(Request::Txn(req)) => applier.txn(req).map(|r| {
            Response::Txn(TxnResponse {
                header: header(applier.revision),
                ..r
            })
        }),
        Some(Request::Compaction(req)) => applier.compact(req).map(|()| {
            Response::Compaction(CompactionResponse {
                header: header(applier.revision),
            })
        }),
        Some(Request::LeaseGrant(req)) => applier.lease_grant(req).map(|r| {
            Response::LeaseGrant(LeaseGrantResponse {
                header: header(applier.revision),
                ..r
            })
        }),
        Some(Request::LeaseRevoke(req)) => applier.lease_revoke(req).map(|()| {
            Response::LeaseRevoke(LeaseRevokeResponse {
                header: header(applier.revision),
            })
        }),
        Some(Request::Publish(attrs)) => members
            .insert(attrs.member_id, attrs.encode_to_vec().as_slice())
            .map(|_| Response::Published(true))
            .map_err(|e| ApplyError::Storage(e.into())),
        Some(Request::Alarm(req)) => {
            let (resp, change) = alarms.apply(req);
            let stored = match change {
                Some(AlarmChange::Raised(member, alarm)) => {
                    tracing::warn!(member = %format!("{member:x}"), alarm, "alarm raised");
                    alarm_table.insert((member, alarm), ()).map(|_| ())
                }
                Some(AlarmChange::Cleared(member, alarm)) => {
                    tracing::info!(member = %format!("{member:x}"), alarm, "alarm cleared");
                    alarm_table.remove((member, alarm)).map(|_| ())
                }
                None => Ok(()),
            };
            stored
                .map(|()| {
                    Response::Alarm(AlarmResponse {
                        header: header(applier.revision),
                        ..resp
                    })
                })
                .map_err(|e| ApplyError::Storage(e.into()))
        }
        // Auth requests were answered above.
        Some(_) | None => Ok(Response::Published(false)),
    };
    match result {
        Ok(response) => Ok(InternalResponse {
            response: Some(response),
        }),
        Err(ApplyError::Rejected(err)) => Ok(InternalResponse {
            response: Some(Response::Error(err.to_wire())),
        }),
        Err(ApplyError::Storage(err)) => Err(err),
    }
}

fn sm_err(e: super::StorageError) -> StorageError {
    StorageError::IO {
        source: StorageIOError::write_state_machine(&e),
    }
}

fn snap_err(e: super::StorageError) -> StorageError {
    StorageError::IO {
        source: StorageIOError::write_snapshot(None, &e),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        blocking(|| self.build()).map_err(snap_err)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        inline(|| self.applied()).map_err(|e| StorageError::IO {
            source: StorageIOError::read_state_machine(&e),
        })
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(log), Some(last)) = (&self.durable_log, entries.last()) {
            log.wait_for(last.log_id.index)
                .await
                .map_err(|e| StorageError::IO {
                    source: StorageIOError::write_state_machine(&e),
                })?;
        }
        inline(|| self.apply_entries(entries)).map_err(sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<RaftSnapshotFile>, StorageError> {
        let (file, temp) = self
            .snap
            .create_temp()
            .map_err(|e| snap_err(self.io_err(e)))?;
        Ok(Box::new(RaftSnapshotFile::temp(file, temp)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<RaftSnapshotFile>,
    ) -> Result<(), StorageError> {
        let (file, temp) = snapshot
            .into_std()
            .await
            .map_err(|e| snap_err(self.io_err(e)))?;
        blocking(|| self.install(meta, file, temp)).map_err(snap_err)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        inline(|| self.current_snapshot()).map_err(|e| StorageError::IO {
            source: StorageIOError::read_snapshot(None, &e),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::auth::AuthConfig;
    use crate::auth::state::AuthState;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, LeaseGrantRequest, PutRequest};
    use crate::raft::types::{Batch, MemberNode};
    use crate::storage::hash::hash_state;

    fn machine(dir: &std::path::Path) -> StateMachine {
        let store = Store::open(dir).unwrap();
        let auth = AuthStore::new(&AuthConfig::default(), AuthState::default()).unwrap();
        StateMachine::new(
            store,
            ApplyHub::new(0),
            Arc::new(Lessor::new()),
            Arc::new(auth),
        )
        .unwrap()
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn request(request: Request) -> InternalRequest {
        InternalRequest {
            request: Some(request),
            ..Default::default()
        }
    }

    fn put(key: &str, value: &str, lease: i64) -> InternalRequest {
        request(Request::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        }))
    }

    /// Applies a membership, a lease and `keys` puts (some overwritten, one
    /// deleted) starting at log index 1; returns the last log id.
    fn load(sm: &StateMachine, keys: usize, tag: &str) -> LogId {
        let mut members = std::collections::BTreeMap::new();
        members.insert(1u64, MemberNode::default());
        let membership = Membership::new(vec![[1u64].into_iter().collect()], members);
        let mut entries = vec![Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(membership),
        }];
        let mut batch = vec![request(Request::LeaseGrant(LeaseGrantRequest {
            ttl: 60,
            id: 7,
        }))];
        for i in 0..keys {
            batch.push(put(&format!("key-{i:05}"), &format!("{tag}-{i}"), 0));
        }
        batch.push(put("key-00001", "again", 7));
        batch.push(request(Request::DeleteRange(DeleteRangeRequest {
            key: b"key-00002".to_vec(),
            ..Default::default()
        })));
        entries.push(Entry {
            log_id: log_id(2),
            payload: EntryPayload::Normal(Batch(batch)),
        });
        sm.apply_entries(entries).unwrap();
        log_id(2)
    }

    fn state_hash(sm: &StateMachine) -> (u32, i64) {
        hash_state(&sm.store.db().begin_read().unwrap()).unwrap()
    }

    fn snapshot_bytes(sm: &StateMachine) -> Vec<u8> {
        let (mut file, _) = sm.snap.open_newest().unwrap().unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    }

    /// Installs `bytes` into `sm` as a received snapshot with `meta`.
    fn install_bytes(
        sm: &StateMachine,
        meta: &SnapshotMeta,
        bytes: &[u8],
    ) -> Result<(), super::super::StorageError> {
        let (mut file, temp) = sm.snap.create_temp().unwrap();
        file.write_all(bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        sm.install(meta, file, Some(temp))
    }

    /// Every live key and its value, read through the key index as a
    /// member reads.
    fn live(sm: &StateMachine) -> Vec<(String, String)> {
        let every = crate::mvcc::range::KeyRange::new(b"\0", b"\0");
        let (kvs, _) = sm
            .store
            .read_kv(|view| view.scan(&every, i64::MAX, usize::MAX))
            .unwrap();
        kvs.into_iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key).unwrap(),
                    String::from_utf8(kv.value).unwrap(),
                )
            })
            .collect()
    }

    fn snap_files(sm: &StateMachine) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(sm.snap.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_format_2_stream_from_an_older_member_installs() {
        use crate::mvcc::{KIND_DELETE, KIND_PUT, encode_history};
        use crate::proto::mvccpb::KeyValue;
        use crate::storage::snapshot_stream::{Row, StreamHeader, StreamWriter};
        let kv = |key: &str, rev: i64, value: &str| KeyValue {
            key: key.into(),
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            value: value.into(),
            lease: 0,
        };
        // Compacted at 3: a@2 kept without its revs row; a@3, b@4 (one
        // txn with c@4), c deleted at 5.
        let versions = [
            ("a", 2, KIND_PUT, kv("a", 2, "old")),
            ("a", 3, KIND_PUT, kv("a", 3, "new")),
            ("b", 4, KIND_PUT, kv("b", 4, "bee")),
            ("c", 4, KIND_PUT, kv("c", 4, "sea")),
            (
                "c",
                5,
                KIND_DELETE,
                KeyValue {
                    key: b"c".to_vec(),
                    mod_revision: 5,
                    ..Default::default()
                },
            ),
        ];
        let records: Vec<Vec<u8>> = versions
            .iter()
            .map(|(_, _, kind, kv)| encode_history(*kind, kv))
            .collect();
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "old-member".into(),
        };
        let header = StreamHeader {
            revision: 5,
            compact_revision: 3,
            meta: meta.clone(),
        };
        let mut writer = StreamWriter::with_format(Vec::new(), &header, 2).unwrap();
        let a3 = kv("a", 3, "new").encode_to_vec();
        let b4 = kv("b", 4, "bee").encode_to_vec();
        writer
            .row(&Row::Latest {
                key: b"a",
                value: &a3,
            })
            .unwrap();
        writer
            .row(&Row::Latest {
                key: b"b",
                value: &b4,
            })
            .unwrap();
        for ((key, rev, _, _), record) in versions.iter().zip(&records) {
            writer
                .row(&Row::History {
                    key: key.as_bytes(),
                    revision: *rev as u64,
                    value: record,
                })
                .unwrap();
        }
        for (revision, sub, key) in [(3, 0, "a"), (4, 0, "b"), (4, 1, "c"), (5, 0, "c")] {
            writer
                .row(&Row::Revs {
                    revision,
                    sub,
                    key: key.as_bytes(),
                })
                .unwrap();
        }
        let bytes = writer.finish().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let sm = machine(dir.path());
        install_bytes(&sm, &meta, &bytes).unwrap();
        assert_eq!(
            live(&sm),
            [("a".into(), "new".into()), ("b".into(), "bee".into())]
        );
        // A watch from the compact revision replays 3, 4 (b, then c) and 5.
        let events = sm
            .store
            .read_kv(|view| {
                assert_eq!((view.revision, view.compact_revision), (5, 3));
                view.events(3, 5, true)
            })
            .unwrap();
        let seen: Vec<(i64, String)> = events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (kv.mod_revision, String::from_utf8(kv.key.clone()).unwrap())
            })
            .collect();
        assert_eq!(
            seen,
            [
                (3, "a".into()),
                (4, "b".into()),
                (4, "c".into()),
                (5, "c".into())
            ]
        );
        assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"old");
        assert_eq!(events[3].prev_kv.as_ref().unwrap().value, b"sea");
    }

    #[test]
    fn build_then_install_into_a_fresh_store_gives_identical_tables() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = machine(a_dir.path());
        let last = load(&a, 500, "a");
        let snapshot = a.build().unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(last));
        assert_eq!(
            snap_files(&a),
            vec![super::super::snapshot_file::file_name(Some(last))]
        );

        let b = machine(b_dir.path());
        load(&b, 3, "b");
        install_bytes(&b, &snapshot.meta, &snapshot_bytes(&a)).unwrap();
        assert_eq!(state_hash(&b), state_hash(&a));
        // The key index was rebuilt with the new records.
        let keys = live(&b);
        assert_eq!(keys, live(&a));
        assert_eq!(keys.len(), 499);
        assert_eq!(keys[1], ("key-00001".into(), "again".into()));
        assert_eq!(b.applied().unwrap(), a.applied().unwrap());
        assert_eq!(b.lessor.ids(), vec![7]);
        // The received file is now b's current snapshot, the temp is gone.
        assert_eq!(snap_files(&b), snap_files(&a));
        let current = b.current_snapshot().unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
        assert_eq!(snapshot_bytes(&b), snapshot_bytes(&a));
    }

    #[test]
    fn a_rebuilt_key_index_continues_each_keys_versions_and_lease() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = machine(a_dir.path());
        load(&a, 5, "a");
        let snapshot = a.build().unwrap();
        let b = machine(b_dir.path());
        install_bytes(&b, &snapshot.meta, &snapshot_bytes(&a)).unwrap();
        // The same puts on the member that applied the history and on the
        // one whose index was rebuilt from the records.
        let update = request(Request::Put(PutRequest {
            key: b"key-00001".to_vec(),
            value: b"third".to_vec(),
            ignore_lease: true,
            ..Default::default()
        }));
        let recreate = put("key-00002", "back", 0);
        for sm in [&a, &b] {
            sm.apply_entries(vec![Entry {
                log_id: log_id(3),
                payload: EntryPayload::Normal(Batch(vec![update.clone(), recreate.clone()])),
            }])
            .unwrap();
        }
        let latest = |sm: &StateMachine, key: &[u8]| {
            sm.store
                .read_kv(|view| view.get_latest(key))
                .unwrap()
                .unwrap()
        };
        let updated = latest(&b, b"key-00001");
        assert_eq!(updated, latest(&a, b"key-00001"));
        assert_eq!((updated.version, updated.lease), (3, 7));
        assert!(updated.create_revision < updated.mod_revision);
        let recreated = latest(&b, b"key-00002");
        assert_eq!(recreated, latest(&a, b"key-00002"));
        assert_eq!(recreated.version, 1);
        assert_eq!(recreated.create_revision, recreated.mod_revision);
        assert_eq!(state_hash(&b), state_hash(&a));
    }

    #[test]
    fn a_bad_snapshot_file_is_refused_and_changes_nothing() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = machine(a_dir.path());
        load(&a, 300, "a");
        let snapshot = a.build().unwrap();
        let good = snapshot_bytes(&a);

        let b = machine(b_dir.path());
        load(&b, 20, "b");
        let before = (state_hash(&b), b.applied().unwrap());
        let truncated = &good[..good.len() / 2];
        let mut flipped = good.clone();
        flipped[good.len() * 3 / 4] ^= 1;
        let mut other_meta = snapshot.meta.clone();
        other_meta.snapshot_id = "another".into();
        for (what, meta, bytes) in [
            ("truncated", &snapshot.meta, truncated),
            ("flipped", &snapshot.meta, flipped.as_slice()),
            ("empty", &snapshot.meta, &[][..]),
            ("another snapshot", &other_meta, good.as_slice()),
        ] {
            let err = install_bytes(&b, meta, bytes).expect_err(what);
            assert!(err.to_string().contains("Raft snapshot"), "{what}: {err}");
            assert_eq!((state_hash(&b), b.applied().unwrap()), before, "{what}");
            assert_eq!(snap_files(&b), Vec::<String>::new(), "{what}");
        }
        install_bytes(&b, &snapshot.meta, &good).unwrap();
        assert_eq!(state_hash(&b), state_hash(&a));
    }

    #[test]
    fn a_newer_snapshot_replaces_the_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let sm = machine(dir.path());
        load(&sm, 10, "a");
        let first = sm.build().unwrap();
        sm.apply_entries(vec![Entry {
            log_id: log_id(3),
            payload: EntryPayload::Normal(Batch(vec![put("later", "v", 0)])),
        }])
        .unwrap();
        let second = sm.build().unwrap();
        assert_eq!(second.meta.last_log_id, Some(log_id(3)));
        assert_eq!(
            snap_files(&sm),
            vec![super::super::snapshot_file::file_name(Some(log_id(3)))]
        );
        assert_eq!(sm.current_snapshot().unwrap().unwrap().meta, second.meta);
        assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
    }

    #[test]
    fn a_snapshot_left_in_redb_by_an_older_build_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let txn = store.db().begin_write().unwrap();
            txn.open_table(SNAPSHOT)
                .unwrap()
                .insert("data", vec![0u8; 4096].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let sm = machine(dir.path());
        let txn = sm.store.db().begin_read().unwrap();
        let empty = match txn.open_table(SNAPSHOT) {
            Ok(table) => table.first().unwrap().is_none(),
            Err(redb::TableError::TableDoesNotExist(_)) => true,
            Err(e) => panic!("{e}"),
        };
        assert!(empty);
        assert!(sm.current_snapshot().unwrap().is_none());
    }

    #[tokio::test]
    async fn an_entry_is_applied_only_once_the_log_holds_it_durably() {
        use std::future::Future;
        use std::task::{Context, Waker};

        use crate::storage::wal::durable::{Durability, DurableLog};

        let dir = tempfile::tempdir().unwrap();
        let durable = |index| Durability {
            upto: Some(log_id(index)),
            failed: false,
        };
        let (tx, rx) = tokio::sync::watch::channel(durable(0));
        let mut sm = machine(dir.path()).applying_what_is_durable_in(DurableLog::new(rx));
        let entry = Entry {
            log_id: log_id(1),
            payload: EntryPayload::Normal(Batch(vec![put("k", "v", 0)])),
        };
        let mut applying = sm.clone();
        let mut apply = std::pin::pin!(applying.apply(vec![entry]));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(apply.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            sm.applied_state().await.unwrap().0,
            None,
            "nothing applied yet"
        );
        tx.send_replace(durable(1));
        let responses = apply.await.unwrap();
        assert_eq!(responses.len(), 1);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1)));
    }
}
