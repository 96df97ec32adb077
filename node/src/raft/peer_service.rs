//! The server side of the peer link: openraft's RPCs and requests forwarded
//! from followers to the leader.

use std::pin::Pin;
use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prost::Message;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::network::{decode, encode};
use super::types::{NodeId, TypeConfig};
use crate::node::Member;
use crate::proto::witanpb::raft_server::Raft as RaftService;
use crate::proto::witanpb::{
    CampaignRequest, CampaignResponse, ClusterMembersRequest, ClusterMembersResponse,
    HoldElectionsRequest, HoldElectionsResponse, MembershipChange, MembershipChangeResult,
    PreVoteRequest, PreVoteResponse, RaftMessage,
};

pub struct PeerService {
    pub member: Arc<Member>,
}

fn bad_request(e: String) -> Status {
    Status::invalid_argument(e)
}

/// One leader's stream of appends to this member.
struct AppendStream {
    /// None once the stream has ended with an error.
    incoming: Option<Streaming<RaftMessage>>,
    member: Arc<Member>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl AppendStream {
    /// The answer to the next append, or None when the stream is over.
    async fn next_reply(&mut self) -> Option<Result<RaftMessage, Status>> {
        let incoming = self.incoming.as_mut()?;
        let message = tokio::select! {
            message = incoming.message() => message,
            _ = self.stopping.wait_for(|stopping| *stopping) => return None,
        };
        // The leader closed the stream (None) or its connection broke:
        // either way nobody is left to answer.
        let message = message.ok()??;
        match decode::<AppendEntriesRequest<TypeConfig>>(&message) {
            Ok(rpc) => Some(Ok(encode(&self.member.raft.append_entries(rpc).await))),
            Err(e) => {
                self.incoming = None;
                Some(Err(bad_request(e)))
            }
        }
    }
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_request)?;
        let result = self.member.raft.append_entries(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    type AppendEntriesStreamStream =
        Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

    /// Answers a leader's appends in order, one at a time, until the leader
    /// closes the stream, the connection breaks, a message is not an
    /// AppendEntries, or this member stops (a stream that outlived the
    /// member would hold the peer server's graceful shutdown open).
    async fn append_entries_stream(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
        let state = AppendStream {
            incoming: Some(req.into_inner()),
            member: self.member.clone(),
            stopping: self.member.stopping.clone(),
        };
        let replies = futures::stream::unfold(state, |mut state| async move {
            let reply = state.next_reply().await?;
            Some((reply, state))
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode(req.get_ref()).map_err(bad_request)?;
        let result = self.member.raft.vote(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref()).map_err(bad_request)?;
        let result = self.member.raft.install_snapshot(rpc).await;
        Ok(Response::new(encode(&result)))
    }

    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let answer = self.member.handle_forward(&req.get_ref().data).await;
        Ok(Response::new(RaftMessage {
            data: answer.encode_to_vec(),
        }))
    }

    async fn cluster_members(
        &self,
        _: Request<ClusterMembersRequest>,
    ) -> Result<Response<ClusterMembersResponse>, Status> {
        let metrics = self.member.raft.metrics().borrow().clone();
        let members = self
            .member
            .members_of(metrics.membership_config.membership())?;
        Ok(Response::new(ClusterMembersResponse {
            cluster_id: self.member.cluster_id,
            members,
            membership_index: metrics.membership_config.log_id().map_or(0, |l| l.index),
            has_leader: metrics.current_leader.is_some(),
        }))
    }

    async fn change_members(
        &self,
        req: Request<MembershipChange>,
    ) -> Result<Response<MembershipChangeResult>, Status> {
        let result = self
            .member
            .change_membership_as_leader(req.into_inner())
            .await?;
        Ok(Response::new(result))
    }

    async fn hold_elections(
        &self,
        req: Request<HoldElectionsRequest>,
    ) -> Result<Response<HoldElectionsResponse>, Status> {
        let duration = std::time::Duration::from_millis(req.get_ref().duration_ms);
        self.member.hold_elections(duration);
        Ok(Response::new(HoldElectionsResponse {}))
    }

    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let duration = std::time::Duration::from_millis(req.get_ref().duration_ms);
        // Elections held for an earlier transfer must not stop this one.
        self.member.hold_elections(std::time::Duration::ZERO);
        self.member.campaign(duration);
        Ok(Response::new(CampaignResponse {}))
    }

    async fn pre_vote(
        &self,
        req: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteResponse>, Status> {
        Ok(Response::new(
            self.member.answer_pre_vote(req.get_ref()).await,
        ))
    }
}
