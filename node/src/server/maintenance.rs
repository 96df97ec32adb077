//! etcdserverpb.Maintenance: Status (what `etcdctl endpoint status` and
//! client version checks need), Alarm (alarms are replicated through Raft,
//! see `mvcc::alarm`), Defragment (compacts this member's database file;
//! not replicated), Snapshot (a witan snapshot file, see `storage::backup`),
//! Hash and HashKV (see `storage::hash`), MoveLeader (through the leader).
//! Downgrade answers as etcd does for an unknown action, and Unimplemented
//! for the actions witan does not support.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::error::EtcdError;
use crate::node::Member;
use crate::node::member::ETCD_COMPAT_VERSION;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::downgrade_request::DowngradeAction;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::proto::witanpb::InternalRequest;
use crate::proto::witanpb::internal_request::Request as Internal;
use crate::proto::witanpb::internal_response::Response as Applied;
use crate::storage::backup::{CHECKSUM_LEN, SnapshotFile};
use crate::storage::{StorageError, hash};

pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    pub fn new(member: Arc<Member>) -> Self {
        MaintenanceService { member }
    }

    /// etcd's `authMaintenanceServer`: Defragment, Snapshot, Hash, HashKV
    /// and Downgrade need the root role; Status, Alarm and MoveLeader are
    /// open.
    fn require_admin<T>(&self, request: &Request<T>) -> Result<(), EtcdError> {
        let auth = &self.member.auth;
        auth.check_admin(auth.info_of(request)?.as_ref())
    }
}

/// The storage version witan reports in Status (etcd 3.6's field).
const STORAGE_VERSION: &str = "3.6.0";

/// Bytes per Snapshot message, as etcd sends them.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

fn saturate(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                // etcd answers GET through Raft, so it is linearizable; a
                // read barrier gives the same guarantee without a log entry.
                self.member.linearizable_barrier().await?;
                let alarms = self.member.alarms()?;
                Ok(Response::new(AlarmResponse {
                    header: self.member.header(self.member.hub.current_revision()),
                    alarms: alarms.list(req.alarm),
                }))
            }
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                let applied = self
                    .member
                    .propose(InternalRequest {
                        request: Some(Internal::Alarm(req)),
                        ..Default::default()
                    })
                    .await?;
                match applied {
                    Applied::Alarm(mut resp) => {
                        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                        resp.header = self.member.header(revision);
                        Ok(Response::new(resp))
                    }
                    _ => Err(EtcdError::Internal("unexpected response".into()).into()),
                }
            }
            // etcd's apply answers an action it does not know with no alarms.
            Err(_) => Ok(Response::new(AlarmResponse {
                header: self.member.header(self.member.hub.current_revision()),
                alarms: Vec::new(),
            })),
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let metrics = self.member.raft.metrics().borrow().clone();
        let store = self.member.store.clone();
        let (db_size, db_size_in_use) = tokio::task::spawn_blocking(move || {
            Ok::<_, StorageError>((store.file_size_bytes(), store.size_in_use_bytes()?))
        })
        .await
        .map_err(|e| EtcdError::Internal(format!("status task: {e}")))?
        .map_err(EtcdError::from)?;
        Ok(Response::new(StatusResponse {
            header: self.member.header(self.member.hub.current_revision()),
            version: ETCD_COMPAT_VERSION.to_string(),
            db_size: saturate(db_size),
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            errors: self.member.alarms()?.status_errors(),
            db_size_in_use: saturate(db_size_in_use),
            is_learner: self.member.is_learner(),
            storage_version: STORAGE_VERSION.to_string(),
            db_size_quota: saturate(self.member.config.quota_backend_bytes.unwrap_or(0)),
            downgrade_info: None,
        }))
    }

    /// Compacts this member's database file (etcd's defragmentation). Every
    /// read and write on this member waits until it is done, as in etcd.
    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.require_admin(&request)?;
        let store = self.member.store.clone();
        let started = std::time::Instant::now();
        let (before_bytes, after_bytes) = tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| EtcdError::Internal(format!("defragment task: {e}")))?
            .map_err(EtcdError::from)?;
        tracing::info!(
            before_bytes,
            after_bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "defragmented"
        );
        Ok(Response::new(DefragmentResponse {
            header: self.member.header(self.member.hub.current_revision()),
        }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.require_admin(&request)?;
        let store = self.member.store.clone();
        let (hash, revision) = tokio::task::spawn_blocking(move || {
            let txn = store.db().begin_read().map_err(StorageError::from)?;
            hash::hash_state(&txn)
        })
        .await
        .map_err(|e| EtcdError::Internal(format!("hash task: {e}")))?
        .map_err(EtcdError::from)?;
        Ok(Response::new(HashResponse {
            header: self.member.header(revision.max(1)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.require_admin(&request)?;
        let revision = request.get_ref().revision;
        let (kv, current) = self
            .member
            .read(|view| Ok((hash::hash_kv(view, revision)?, view.revision)))?;
        Ok(Response::new(HashKvResponse {
            header: self.member.header(current),
            hash: kv.hash,
            compact_revision: kv.compact_revision,
            hash_revision: kv.revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// Streams a witan snapshot file of this member's state as etcd streams
    /// its database: the content in 32 KiB chunks with `remaining_bytes`
    /// counting down to 0, then the SHA-256 trailer in a last message (also
    /// `remaining_bytes` 0). The first message's header carries the
    /// snapshot's revision.
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.require_admin(&request)?;
        let store = self.member.store.clone();
        let (revision, file) = tokio::task::spawn_blocking(move || {
            let txn = store.db().begin_read().map_err(StorageError::from)?;
            let snapshot = SnapshotFile::capture(&txn, ETCD_COMPAT_VERSION)?;
            drop(txn);
            Ok::<_, StorageError>((snapshot.image.revision, snapshot.encode()))
        })
        .await
        .map_err(|e| EtcdError::Internal(format!("snapshot task: {e}")))?
        .map_err(EtcdError::from)?;
        tracing::info!(
            revision,
            total_bytes = file.len(),
            "sending snapshot to client"
        );
        let header = self.member.header(revision.max(1));
        let content = file.len() - CHECKSUM_LEN;
        let mut bounds: Vec<(usize, usize)> = (0..content)
            .step_by(SNAPSHOT_CHUNK)
            .map(|start| (start, (start + SNAPSHOT_CHUNK).min(content)))
            .collect();
        bounds.push((content, file.len()));
        let file = Arc::new(file);
        let messages = bounds
            .into_iter()
            .enumerate()
            .map(move |(i, (start, end))| {
                Ok(SnapshotResponse {
                    header: if i == 0 { header } else { None },
                    remaining_bytes: content.saturating_sub(end) as u64,
                    blob: file[start..end].to_vec(),
                    version: ETCD_COMPAT_VERSION.to_string(),
                })
            });
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.member
            .transfer_leadership(request.get_ref().target_id)
            .await?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.member.header(self.member.hub.current_revision()),
        }))
    }

    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.require_admin(&request)?;
        match DowngradeAction::try_from(request.get_ref().action) {
            Ok(action) => Err(Status::unimplemented(format!(
                "witan: Downgrade {} is not supported: witan has no cluster \
                 downgrade (a member only opens its own storage format)",
                action.as_str_name()
            ))),
            // etcd answers an action it does not know with ErrGRPCUnknownMethod.
            Err(_) => Err(Status::invalid_argument("etcdserver: unknown method")),
        }
    }
}
