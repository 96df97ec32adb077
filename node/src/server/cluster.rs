//! etcdserverpb.Cluster: MemberList on any member; MemberAdd, MemberRemove,
//! MemberUpdate and MemberPromote are carried out by the leader (see
//! `node::reconfig`), wherever they arrive.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::node::Member;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::proto::witanpb::MembershipChange;
use crate::proto::witanpb::membership_change::Change;
use crate::proto::witanpb::membership_change_result::Result as ChangeResult;

pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    pub fn new(member: Arc<Member>) -> Self {
        ClusterService { member }
    }

    async fn change(&self, change: Change) -> Result<ChangeResult, Status> {
        self.member
            .change_membership(MembershipChange {
                change: Some(change),
            })
            .await?
            .result
            .ok_or_else(|| Status::internal("empty membership change result"))
    }
}

fn mismatched() -> Status {
    Status::internal("membership change answered for another kind of change")
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        match self.change(Change::Add(request.into_inner())).await? {
            ChangeResult::Add(resp) => Ok(Response::new(resp)),
            _ => Err(mismatched()),
        }
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        match self.change(Change::Remove(request.into_inner())).await? {
            ChangeResult::Remove(resp) => Ok(Response::new(resp)),
            _ => Err(mismatched()),
        }
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        match self.change(Change::Update(request.into_inner())).await? {
            ChangeResult::Update(resp) => Ok(Response::new(resp)),
            _ => Err(mismatched()),
        }
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.member.linearizable_barrier().await?;
        }
        let members = self.member.member_list()?;
        Ok(Response::new(MemberListResponse {
            header: self.member.header(self.member.hub.current_revision()),
            members,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        match self.change(Change::Promote(request.into_inner())).await? {
            ChangeResult::Promote(resp) => Ok(Response::new(resp)),
            _ => Err(mismatched()),
        }
    }
}
