//! etcdserverpb.Lease: grant and revoke go through Raft; keep-alives and
//! time-to-live are answered from the leader's clock.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::apply::stamp;
use crate::auth::check;
use crate::error::EtcdError;
use crate::mvcc::validate;
use crate::node::Member;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::witanpb::internal_request::Request as Internal;
use crate::proto::witanpb::internal_response::Response as Applied;

pub struct LeaseService {
    member: Arc<Member>,
}

impl LeaseService {
    pub fn new(member: Arc<Member>) -> Self {
        LeaseService { member }
    }

    /// A keep-alive stream: one answer per request in `inbound`, in order,
    /// until `inbound` ends or fails. gRPC and the JSON gateway both use it.
    pub fn open(
        &self,
        mut inbound: impl Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    ) -> ReceiverStream<Result<LeaseKeepAliveResponse, Status>> {
        let (tx, rx) = mpsc::channel(16);
        let member = self.member.clone();
        let mut stopping = self.member.stopping.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    // Shutting down: end the stream so the server can stop.
                    _ = stopping.changed() => return,
                    next = inbound.next() => next,
                };
                let req = match next {
                    Some(Ok(req)) => req,
                    None => return,
                    Some(Err(status)) => {
                        tracing::debug!(error = %status, "keep-alive stream ended");
                        return;
                    }
                };
                let answer = member.keep_alive(req).await.map_err(Status::from);
                if tx.send(answer).await.is_err() {
                    return;
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

/// A lease id the server picks: positive, as etcd's are.
fn new_lease_id() -> i64 {
    (rand::random::<u64>() >> 1).max(1) as i64
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        // etcd checks no permission to grant a lease, only that a token
        // given is valid.
        let info = self.member.auth.info_of(&request)?;
        let mut req = request.into_inner();
        req.ttl = validate::lease_ttl(req.ttl, self.member.config.min_lease_ttl_secs())?;
        if req.id == 0 {
            req.id = new_lease_id();
        }
        let applied = self
            .member
            .propose(stamp(Internal::LeaseGrant(req), info.as_ref()))
            .await?;
        match applied {
            Applied::LeaseGrant(mut resp) => {
                let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                resp.header = self.member.header(revision);
                Ok(Response::new(resp))
            }
            _ => Err(EtcdError::Internal("unexpected response".into()).into()),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // Write permission on every attached key is checked at apply.
        let info = self.member.auth.info_of(&request)?;
        let req = request.into_inner();
        let applied = self
            .member
            .propose(stamp(Internal::LeaseRevoke(req), info.as_ref()))
            .await?;
        match applied {
            Applied::LeaseRevoke(mut resp) => {
                let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                resp.header = self.member.header(revision);
                Ok(Response::new(resp))
            }
            _ => Err(EtcdError::Internal("unexpected response".into()).into()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        Ok(Response::new(Box::pin(self.open(request.into_inner()))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let info = self.member.auth.info_of(&request)?;
        let req = request.into_inner();
        if self.member.auth.is_enabled() {
            // etcd: read permission on every attached key.
            self.member.linearizable_barrier().await?;
            let keys = self.member.lease_keys(req.id)?;
            self.member
                .auth
                .check(info.as_ref(), &check::lease_keys_read_needs(keys))?;
        }
        let resp = self.member.time_to_live(req).await?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.member.linearizable_barrier().await?;
        let leases = self
            .member
            .lease_ids()?
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.member.header(self.member.hub.current_revision()),
            leases,
        }))
    }
}
