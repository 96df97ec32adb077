//! witanpb.Membership: witan's joint voter-set change (see
//! `api/proto/witanpb/membership.proto`), carried out by the leader.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::node::Member;
use crate::proto::witanpb::membership_change::Change;
use crate::proto::witanpb::membership_change_result::Result as ChangeResult;
use crate::proto::witanpb::membership_server::Membership;
use crate::proto::witanpb::{
    ChangeVotersRequest, ChangeVotersResponse, MembershipChange, VoterSet, VotersRequest,
    VotersResponse,
};

pub struct MembershipService {
    member: Arc<Member>,
}

impl MembershipService {
    pub fn new(member: Arc<Member>) -> Self {
        MembershipService { member }
    }
}

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn change_voters(
        &self,
        request: Request<ChangeVotersRequest>,
    ) -> Result<Response<ChangeVotersResponse>, Status> {
        // A voter change is cluster administration: the root role, when
        // auth is on (reading the voters is open, as MemberList is).
        let auth = &self.member.auth;
        auth.check_admin(auth.info_of(&request)?.as_ref())?;
        let change = MembershipChange {
            change: Some(Change::ChangeVoters(request.into_inner())),
        };
        match self.member.change_membership(change).await?.result {
            Some(ChangeResult::ChangeVoters(resp)) => Ok(Response::new(resp)),
            _ => Err(Status::internal(
                "membership change answered for another kind of change",
            )),
        }
    }

    async fn voters(
        &self,
        request: Request<VotersRequest>,
    ) -> Result<Response<VotersResponse>, Status> {
        if request.get_ref().linearizable {
            self.member.linearizable_barrier().await?;
        }
        let metrics = self.member.raft.metrics().borrow().clone();
        let stored = &metrics.membership_config;
        let config_index = stored.log_id().map_or(0, |l| l.index);
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        let configs = stored
            .membership()
            .get_joint_config()
            .iter()
            .map(|set| VoterSet {
                voter_ids: set.iter().copied().collect(),
            })
            .collect();
        Ok(Response::new(VotersResponse {
            header: self.member.header(self.member.hub.current_revision()),
            configs,
            config_index,
            committed: applied >= config_index,
        }))
    }
}
