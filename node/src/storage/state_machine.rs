//! The replicated state machine (openraft's `RaftStateMachine`): applies
//! committed batches to the MVCC tables, builds and installs snapshots.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use prost::Message;
use redb::{Durability, ReadableTable};

use super::snapshot::SnapshotImage;
use super::{
    ALARMS, AUTH, KV_HISTORY, KV_LATEST, KV_REVS, LEASE_KEYS, LEASES, MEMBERS, META, SNAPSHOT,
    Store, blocking, inline, meta_i64, meta_key, meta_rmp, to_rmp,
};
use crate::auth::state::AuthState;
use crate::auth::{self, AuthEffects, AuthStore};
use crate::hub::{ApplyHub, ApplyNotice};
use crate::lease::lessor::Lessor;
use crate::mvcc::alarm::{ActiveAlarms, AlarmChange};
use crate::mvcc::apply::{Applier, ApplyError, LeaseChange};
use crate::mvcc::read::ReadView;
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
    hub: ApplyHub,
    lessor: Arc<Lessor>,
    /// The member's in-memory auth state, replaced when an apply or a
    /// snapshot changes it.
    auth: Arc<AuthStore>,
    /// Times each apply transaction's commit, when set.
    commit_timer: Option<prometheus::Histogram>,
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
        let sm = StateMachine {
            store,
            hub,
            lessor,
            auth,
            commit_timer: None,
        };
        let leases = sm.lease_ttls()?;
        sm.lessor.reset(leases, Instant::now());
        Ok(sm)
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
        let meta = txn.open_table(META)?;
        let applied: Option<LogId> = meta_rmp(&meta, meta_key::APPLIED)?;
        let membership: Option<StoredMembership> = meta_rmp(&meta, meta_key::MEMBERSHIP)?;
        Ok((applied, membership.unwrap_or_default()))
    }

    fn apply_entries(
        &self,
        entries: Vec<Entry>,
    ) -> Result<Vec<BatchResponse>, super::StorageError> {
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
                ReadView {
                    latest: txn.open_table(KV_LATEST)?,
                    history: txn.open_table(KV_HISTORY)?,
                    revs: txn.open_table(KV_REVS)?,
                    revision,
                    compact_revision,
                },
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
                applier.view.revision.to_le_bytes().as_slice(),
            )?;
            meta.insert(
                meta_key::COMPACT_REVISION,
                applier.view.compact_revision.to_le_bytes().as_slice(),
            )?;
            (
                std::mem::take(&mut applier.events),
                std::mem::take(&mut applier.lease_changes),
                applier.view.revision,
            )
        };
        let started = Instant::now();
        txn.commit()?;
        if let Some(timer) = &self.commit_timer {
            timer.observe(started.elapsed().as_secs_f64());
        }
        tracing::trace!(revision, "applied batch");
        if !Arc::ptr_eq(&auth_state, &auth_before) {
            self.auth.install(auth_state);
        }
        self.auth.apply_effects(auth_effects);
        let now = Instant::now();
        for change in lease_changes {
            match change {
                LeaseChange::Granted { id, ttl_secs } => self.lessor.granted(id, ttl_secs, now),
                LeaseChange::Revoked { id } => self.lessor.revoked(id),
            }
        }
        self.hub.publish(ApplyNotice {
            revision,
            events,
            reset: false,
        });
        Ok(responses)
    }

    fn build(&self) -> Result<Snapshot, super::StorageError> {
        let txn = self.store.db().begin_read()?;
        let (applied, membership) = {
            let meta = txn.open_table(META)?;
            let applied: Option<LogId> = meta_rmp(&meta, meta_key::APPLIED)?;
            let membership: Option<StoredMembership> = meta_rmp(&meta, meta_key::MEMBERSHIP)?;
            (applied, membership.unwrap_or_default())
        };
        let image = SnapshotImage::capture(&txn)?;
        drop(txn);
        let data = image.encode();
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
        self.save_snapshot(&meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), super::StorageError> {
        let txn = self.store.db().begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            table.insert("meta", to_rmp(meta).as_slice())?;
            table.insert("data", data)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn install(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), super::StorageError> {
        let image = SnapshotImage::decode(&data)?;
        let txn = self.store.db().begin_write()?;
        image.restore(&txn)?;
        {
            let mut table = txn.open_table(META)?;
            if let Some(applied) = meta.last_log_id {
                table.insert(meta_key::APPLIED, to_rmp(&applied).as_slice())?;
            }
            table.insert(
                meta_key::MEMBERSHIP,
                to_rmp(&meta.last_membership).as_slice(),
            )?;
            let mut snap = txn.open_table(SNAPSHOT)?;
            snap.insert("meta", to_rmp(meta).as_slice())?;
            snap.insert("data", data.as_slice())?;
        }
        txn.commit()?;
        self.lessor.reset(image.lease_ttls()?, Instant::now());
        let txn = self.store.db().begin_read()?;
        let auth_state = auth::load(&txn)?;
        drop(txn);
        self.auth.install(Arc::new(auth_state));
        self.hub.publish(ApplyNotice {
            revision: image.revision,
            events: Vec::new(),
            reset: true,
        });
        tracing::info!(revision = image.revision, "installed snapshot");
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>, super::StorageError> {
        let txn = self.store.db().begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let (Some(meta), Some(data)) = (table.get("meta")?, table.get("data")?) else {
            return Ok(None);
        };
        let meta: SnapshotMeta = rmp_serde::from_slice(meta.value())
            .map_err(|e| super::StorageError::corrupt("snapshot meta", e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.value().to_vec())),
        }))
    }
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
                header: header(applier.view.revision),
                ..r
            })
        }),
        Some(Request::DeleteRange(req)) => applier.delete_range(req).map(|r| {
            Response::DeleteRange(DeleteRangeResponse {
                header: header(applier.view.revision),
                ..r
            })
        }),
        Some(Request::Txn(req)) => applier.txn(req).map(|r| {
            Response::Txn(TxnResponse {
                header: header(applier.view.revision),
                ..r
            })
        }),
        Some(Request::Compaction(req)) => applier.compact(req).map(|()| {
            Response::Compaction(CompactionResponse {
                header: header(applier.view.revision),
            })
        }),
        Some(Request::LeaseGrant(req)) => applier.lease_grant(req).map(|r| {
            Response::LeaseGrant(LeaseGrantResponse {
                header: header(applier.view.revision),
                ..r
            })
        }),
        Some(Request::LeaseRevoke(req)) => applier.lease_revoke(req).map(|()| {
            Response::LeaseRevoke(LeaseRevokeResponse {
                header: header(applier.view.revision),
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
                        header: header(applier.view.revision),
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
        inline(|| self.apply_entries(entries)).map_err(sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        blocking(|| self.install(meta, data)).map_err(snap_err)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        inline(|| self.current_snapshot()).map_err(|e| StorageError::IO {
            source: StorageIOError::read_snapshot(None, &e),
        })
    }
}
