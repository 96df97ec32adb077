//! The server side of the peer link: openraft's RPCs and requests forwarded
//! from followers to the leader.

use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prost::Message;
use tonic::{Request, Response, Status};

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
