//! One member's request-facing core: the write path (proposer), the read
//! paths (local and linearizable), leases, membership and status. The gRPC
//! services are thin layers over this.

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use redb::ReadableTable;

use super::committer::{Committer, Leadership};
use super::proposer::Proposer;
use super::read_barrier::ReadBarrier;
use crate::config::Config;
use crate::error::EtcdError;
use crate::hub::ApplyHub;
use crate::lease::lessor::Lessor;
use crate::metrics::Metrics;
use crate::mvcc::apply::lease_keys_of;
use crate::proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    Member as PbMember, ResponseHeader,
};
use crate::proto::witanpb::forward_request::Request as FwdReq;
use crate::proto::witanpb::forward_response::Response as FwdResp;
use crate::proto::witanpb::internal_response::Response;
use crate::proto::witanpb::{
    ForwardRequest, ForwardResponse, InternalBatchResponse, InternalRequest, MemberAttributes,
};
use crate::raft::types::{NodeId, Raft};
use crate::storage::{LEASE_KEYS, LEASES, MEMBERS, Store, inline};

/// The etcd version witan reports: clients and kube-apiserver enable
/// features (progress notify, etc.) by it.
pub const ETCD_COMPAT_VERSION: &str = "3.6.5";

pub type LocalView<'a> = crate::storage::KvView<'a>;

pub struct Member {
    pub id: NodeId,
    pub cluster_id: u64,
    pub config: Arc<Config>,
    pub raft: Raft,
    pub store: Store,
    /// The Raft log (the last log id is what PreVote compares).
    pub log: Arc<crate::storage::wal::Wal>,
    pub hub: ApplyHub,
    pub lessor: Arc<Lessor>,
    /// Users, roles and tokens: what every request is checked against.
    pub auth: Arc<crate::auth::AuthStore>,
    pub committer: Arc<Committer>,
    pub proposer: Proposer,
    pub barrier: ReadBarrier,
    /// This member's Prometheus metrics (served on `/metrics`).
    pub metrics: Arc<Metrics>,
    /// Flips to true when the member starts shutting down; long-lived
    /// streams end on it.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Admits one membership change at a time on the leader.
    pub reconfig_lock: tokio::sync::Mutex<()>,
    /// Flips to true once this member learns it was removed from the
    /// cluster; the daemon then shuts down, as etcd does.
    pub removed: tokio::sync::watch::Sender<bool>,
    /// Until when this member starts no election (a leadership transfer
    /// to another member is under way).
    pub election_hold: super::transfer::ElectionHold,
}

impl Member {
    /// The header every response carries.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        })
    }

    /// Runs `f` over a consistent local view of the store.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&LocalView<'_>) -> Result<T, EtcdError>,
    ) -> Result<T, EtcdError> {
        inline(|| self.store.read_kv(f))
    }

    /// Waits until a local read is linearizable (ReadIndex).
    pub async fn linearizable_barrier(&self) -> Result<(), EtcdError> {
        // PLANTED BUG (feature `stale-follower-read`, robustness suite
        // only): a follower answers from its own state without ReadIndex.
        #[cfg(feature = "stale-follower-read")]
        if !matches!(self.committer.leadership(), Leadership::Me) {
            return Ok(());
        }
        self.barrier.wait().await
    }

    /// Proposes a write and returns its response, or etcd's error.
    pub async fn propose(&self, request: InternalRequest) -> Result<Response, EtcdError> {
        // etcd measures the replicated request against --max-request-bytes.
        if request.encoded_len() > self.config.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        self.check_quota(&request).await?;
        let response = self.proposer.propose(request).await?;
        match response.response {
            Some(Response::Error(code)) => Err(EtcdError::from_wire(code)),
            Some(r) => Ok(r),
            None => Err(EtcdError::Internal("empty response".into())),
        }
    }

    /// Serves a request another member forwarded to this one (the leader).
    pub async fn handle_forward(&self, raw: &[u8]) -> ForwardResponse {
        let result = match ForwardRequest::decode(raw) {
            Err(e) => Err(EtcdError::Internal(format!(
                "decoding forwarded request: {e}"
            ))),
            Ok(req) => match req.request {
                Some(FwdReq::Batch(batch)) => self
                    .committer
                    .write_as_leader(batch.requests)
                    .await
                    .map(|responses| FwdResp::Batch(InternalBatchResponse { responses })),
                Some(FwdReq::ReadIndex(_)) => self
                    .committer
                    .read_index_as_leader()
                    .await
                    .map(FwdResp::ReadIndex),
                Some(FwdReq::LeaseKeepAlive(req)) => {
                    self.keep_alive_as_leader(&req).map(FwdResp::LeaseKeepAlive)
                }
                Some(FwdReq::LeaseTimeToLive(req)) => self
                    .time_to_live_as_leader(&req)
                    .map(FwdResp::LeaseTimeToLive),
                None => Err(EtcdError::Internal("empty forwarded request".into())),
            },
        };
        ForwardResponse {
            response: Some(result.unwrap_or_else(|e| FwdResp::Error(e.to_wire()))),
        }
    }

    fn require_leader(&self) -> Result<(), EtcdError> {
        match self.committer.leadership() {
            Leadership::Me => Ok(()),
            _ => Err(EtcdError::NotLeader),
        }
    }

    fn keep_alive_as_leader(
        &self,
        req: &LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, EtcdError> {
        self.require_leader()?;
        // A missing lease answers TTL 0, as etcd does.
        let ttl = self.lessor.keep_alive(req.id, Instant::now()).unwrap_or(0);
        Ok(LeaseKeepAliveResponse {
            header: self.header(self.hub.current_revision()),
            id: req.id,
            ttl,
        })
    }

    fn time_to_live_as_leader(
        &self,
        req: &LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, EtcdError> {
        self.require_leader()?;
        let header = self.header(self.hub.current_revision());
        let Some((remaining, granted)) = self.lessor.remaining(req.id, Instant::now()) else {
            // etcd answers a missing lease with TTL -1, not an error.
            return Ok(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let keys = if req.keys {
            self.lease_keys(req.id)?
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
        })
    }

    /// Runs `local` when this member leads, or sends `forwarded` to the
    /// leader and takes its answer out with `answer`.
    async fn on_leader<T>(
        &self,
        local: impl FnOnce() -> Result<T, EtcdError>,
        forwarded: FwdReq,
        answer: impl FnOnce(FwdResp) -> Option<T>,
    ) -> Result<T, EtcdError> {
        match self.committer.leader().await? {
            Leadership::Me => local(),
            Leadership::Other(_, node) => {
                let resp = self.committer.forward(&node, forwarded).await?;
                answer(resp)
                    .ok_or_else(|| EtcdError::Internal("unexpected forwarded answer".into()))
            }
            Leadership::Unknown => Err(EtcdError::NoLeader),
        }
    }

    /// Renews a lease on the leader (forwarding when needed).
    pub async fn keep_alive(
        &self,
        req: LeaseKeepAliveRequest,
    ) -> Result<LeaseKeepAliveResponse, EtcdError> {
        let mut resp = self
            .on_leader(
                || self.keep_alive_as_leader(&req),
                FwdReq::LeaseKeepAlive(req),
                |r| match r {
                    FwdResp::LeaseKeepAlive(r) => Some(r),
                    _ => None,
                },
            )
            .await?;
        resp.header = self.header(self.hub.current_revision());
        Ok(resp)
    }

    /// A lease's remaining TTL, from the leader's clock.
    pub async fn time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, EtcdError> {
        let mut resp = self
            .on_leader(
                || self.time_to_live_as_leader(&req),
                FwdReq::LeaseTimeToLive(req),
                |r| match r {
                    FwdResp::LeaseTimeToLive(r) => Some(r),
                    _ => None,
                },
            )
            .await?;
        resp.header = self.header(self.hub.current_revision());
        Ok(resp)
    }

    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, EtcdError> {
        inline(|| {
            let txn = self.store.db().begin_read().map_err(storage_err)?;
            let table = txn.open_table(LEASE_KEYS).map_err(storage_err)?;
            Ok(lease_keys_of(&table, id)?)
        })
    }

    /// Every lease id in the applied state.
    pub fn lease_ids(&self) -> Result<Vec<i64>, EtcdError> {
        inline(|| {
            let txn = self.store.db().begin_read().map_err(storage_err)?;
            let table = txn.open_table(LEASES).map_err(storage_err)?;
            let mut ids = Vec::new();
            for item in table.iter().map_err(storage_err)? {
                let (id, _) = item.map_err(storage_err)?;
                ids.push(id.value());
            }
            Ok(ids)
        })
    }

    /// Attributes members published about themselves.
    pub fn member_attributes(&self, id: NodeId) -> Result<Option<MemberAttributes>, EtcdError> {
        inline(|| {
            let txn = self.store.db().begin_read().map_err(storage_err)?;
            let table = txn.open_table(MEMBERS).map_err(storage_err)?;
            match table.get(id).map_err(storage_err)? {
                Some(raw) => MemberAttributes::decode(raw.value())
                    .map(Some)
                    .map_err(|e| EtcdError::Internal(format!("member attributes: {e}"))),
                None => Ok(None),
            }
        })
    }

    /// Members as etcd lists them: voters and learners, with what each has
    /// published (an unstarted member has an empty name and client URLs).
    pub fn member_list(&self) -> Result<Vec<PbMember>, EtcdError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        self.members_of(membership.membership())
    }

    /// Whether this member is a learner: a member of the cluster, but not
    /// a voter. A member still joining (no membership yet) is neither.
    pub fn is_learner(&self) -> bool {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        membership.get_node(&self.id).is_some() && !membership.voter_ids().any(|id| id == self.id)
    }
}

pub(crate) fn storage_err(e: impl Into<redb::Error>) -> EtcdError {
    EtcdError::from(crate::storage::StorageError::Redb(e.into()))
}
