//! Carrying out membership changes: the leader checks a change against the
//! cluster as it is (see `membership`), proposes it through openraft's
//! joint consensus and answers with the membership that resulted. Any other
//! member hands the change to the leader over the peer link.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Membership};
use tonic::Status;

use super::committer::Leadership;
use super::member::Member;
use super::membership::{self, ClusterView, VoterChange};
use crate::error::EtcdError;
use crate::ids;
use crate::proto::etcdserverpb::{
    Member as PbMember, MemberAddRequest, MemberAddResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse,
};
use crate::proto::witanpb::membership_change::Change;
use crate::proto::witanpb::membership_change_result::Result as ChangeResult;
use crate::proto::witanpb::{
    ChangeVotersRequest, ChangeVotersResponse, MembershipChange, MembershipChangeResult,
};
use crate::raft::types::{MemberNode, NodeId};

/// Pause between two tries while a previous change is still being
/// committed, or while the leader is being found.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

type RaftMembership = Membership<NodeId, MemberNode>;

impl Member {
    /// Applies a membership change through whoever leads, waiting out an
    /// election (bounded by the request timeout) as writes do.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipChangeResult, Status> {
        let deadline = tokio::time::Instant::now() + self.committer.request_timeout;
        loop {
            let attempt = match self.committer.leader().await? {
                Leadership::Me => self
                    .change_membership_as_leader(change.clone())
                    .await
                    .map_err(Status::from),
                Leadership::Other(_, node) => self.forward_change(&node, change.clone()).await,
                Leadership::Unknown => Err(EtcdError::NoLeader.into()),
            };
            match attempt {
                // Refused before anything was proposed: try the new leader.
                Err(status) if is_not_leader(&status) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(status) if is_not_leader(&status) => {
                    return Err(EtcdError::LeaderChanged.into());
                }
                other => return other,
            }
        }
    }

    async fn forward_change(
        &self,
        leader: &MemberNode,
        change: MembershipChange,
    ) -> Result<MembershipChangeResult, Status> {
        let mut client = self
            .committer
            .channels
            .client(leader)
            .map_err(EtcdError::Internal)?;
        let mut request = tonic::Request::new(change);
        request.set_timeout(self.committer.request_timeout);
        client
            .change_members(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Runs a change on this member, which must lead. One change at a
    /// time: each is checked against the membership the previous one left.
    pub async fn change_membership_as_leader(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipChangeResult, EtcdError> {
        let _one_at_a_time = self.reconfig_lock.lock().await;
        let change = change
            .change
            .ok_or_else(|| EtcdError::Internal("empty membership change".into()))?;
        let result = match change {
            Change::Add(req) => ChangeResult::Add(self.add_member(req).await?),
            Change::Remove(req) => ChangeResult::Remove(self.remove_member(req).await?),
            Change::Update(req) => ChangeResult::Update(self.update_member(req).await?),
            Change::Promote(req) => ChangeResult::Promote(self.promote_member(req).await?),
            Change::ChangeVoters(req) => {
                ChangeResult::ChangeVoters(self.change_voters_as_leader(req).await?)
            }
        };
        Ok(MembershipChangeResult {
            result: Some(result),
        })
    }

    /// The cluster as the leader sees it now.
    fn cluster_view(&self) -> Result<(ClusterView, bool), EtcdError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.id) {
            return Err(EtcdError::NotLeader);
        }
        let membership = metrics.membership_config.membership();
        let nodes: BTreeMap<NodeId, MemberNode> = membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        let mut started = BTreeSet::new();
        for id in nodes.keys() {
            if self
                .member_attributes(*id)?
                .is_some_and(|a| !a.name.is_empty())
            {
                started.insert(*id);
            }
        }
        let leader_last_index = metrics.last_log_index.unwrap_or(0);
        let mut matched_index: BTreeMap<NodeId, u64> = metrics
            .replication
            .iter()
            .flatten()
            .map(|(id, log_id)| (*id, log_id.map_or(0, |l| l.index)))
            .collect();
        matched_index.insert(self.id, leader_last_index);
        let uniform = membership.get_joint_config().len() == 1;
        let view = ClusterView {
            voters: membership.voter_ids().collect(),
            nodes,
            started,
            matched_index,
            leader_last_index,
            max_learners: self.config.max_learners,
        };
        Ok((view, uniform))
    }

    /// Proposes `change` and returns the membership it produced. A change
    /// refused because the previous one is not committed yet (a new leader
    /// commits it with its first entry) is tried again until the deadline.
    async fn propose_change(
        &self,
        change: ChangeMembers<NodeId, MemberNode>,
    ) -> Result<RaftMembership, EtcdError> {
        let deadline = tokio::time::Instant::now() + self.committer.request_timeout;
        loop {
            match self.raft.change_membership(change.clone(), false).await {
                Ok(resp) => {
                    return resp.membership.ok_or_else(|| {
                        EtcdError::Internal("membership change without a membership".into())
                    });
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(change_error(e)),
            }
        }
    }

    /// Members of `membership` as etcd lists them.
    pub fn members_of(&self, membership: &RaftMembership) -> Result<Vec<PbMember>, EtcdError> {
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut out = Vec::new();
        for (id, node) in membership.nodes() {
            let attrs = self.member_attributes(*id)?.unwrap_or_default();
            out.push(PbMember {
                id: *id,
                name: attrs.name,
                peer_ur_ls: node.peer_urls.clone(),
                client_ur_ls: attrs.client_urls,
                is_learner: !voters.contains(id),
            });
        }
        Ok(out)
    }

    async fn add_member(&self, req: MemberAddRequest) -> Result<MemberAddResponse, EtcdError> {
        let (view, _) = self.cluster_view()?;
        membership::check_add(&view, &req.peer_ur_ls, req.is_learner)?;
        let now_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = ids::added_member_id(
            &req.peer_ur_ls,
            &self.config.initial_cluster_token,
            now_nanos,
        );
        if view.nodes.contains_key(&id) {
            return Err(EtcdError::MemberExist);
        }
        let node = MemberNode {
            peer_urls: req.peer_ur_ls.clone(),
        };
        let nodes = BTreeMap::from([(id, node)]);
        let change = if req.is_learner {
            ChangeMembers::AddNodes(nodes)
        } else {
            ChangeMembers::AddVoters(nodes)
        };
        let after = self.propose_change(change).await?;
        tracing::info!(added = %format!("{id:x}"), learner = req.is_learner, urls = ?req.peer_ur_ls, "member added");
        Ok(MemberAddResponse {
            header: self.header(self.hub.current_revision()),
            member: Some(PbMember {
                id,
                name: String::new(),
                peer_ur_ls: req.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members_of(&after)?,
        })
    }

    async fn remove_member(
        &self,
        req: MemberRemoveRequest,
    ) -> Result<MemberRemoveResponse, EtcdError> {
        let (view, _) = self.cluster_view()?;
        membership::check_remove(&view, req.id)?;
        let ids = BTreeSet::from([req.id]);
        let change = if view.voters.contains(&req.id) {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        let after = self.propose_change(change).await?;
        tracing::info!(removed = %format!("{:x}", req.id), "member removed");
        Ok(MemberRemoveResponse {
            header: self.header(self.hub.current_revision()),
            members: self.members_of(&after)?,
        })
    }

    async fn update_member(
        &self,
        req: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse, EtcdError> {
        let (view, _) = self.cluster_view()?;
        membership::check_update(&view, req.id, &req.peer_ur_ls)?;
        let node = MemberNode {
            peer_urls: req.peer_ur_ls.clone(),
        };
        let after = self
            .propose_change(ChangeMembers::SetNodes(BTreeMap::from([(req.id, node)])))
            .await?;
        tracing::info!(updated = %format!("{:x}", req.id), urls = ?req.peer_ur_ls, "member peer URLs updated");
        Ok(MemberUpdateResponse {
            header: self.header(self.hub.current_revision()),
            members: self.members_of(&after)?,
        })
    }

    async fn promote_member(
        &self,
        req: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, EtcdError> {
        let (view, _) = self.cluster_view()?;
        membership::check_promote(&view, req.id)?;
        let after = self
            .propose_change(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])))
            .await?;
        tracing::info!(promoted = %format!("{:x}", req.id), "learner promoted");
        Ok(MemberPromoteResponse {
            header: self.header(self.hub.current_revision()),
            members: self.members_of(&after)?,
        })
    }

    async fn change_voters_as_leader(
        &self,
        req: ChangeVotersRequest,
    ) -> Result<ChangeVotersResponse, EtcdError> {
        let (view, uniform) = self.cluster_view()?;
        let after = match membership::check_change_voters(&view, &req.voter_ids, uniform)? {
            VoterChange::Done => self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .clone(),
            VoterChange::Replace(voters) => {
                let after = self
                    .propose_change(ChangeMembers::ReplaceAllVoters(voters.clone()))
                    .await?;
                tracing::info!(voters = ?voters.iter().map(|v| format!("{v:x}")).collect::<Vec<_>>(), "voter set changed");
                after
            }
        };
        Ok(ChangeVotersResponse {
            header: self.header(self.hub.current_revision()),
            members: self.members_of(&after)?,
        })
    }
}

/// openraft's refusals in etcd's words.
fn change_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> EtcdError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => EtcdError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(err)) => match err {
            ChangeMembershipError::InProgress(_) => EtcdError::Timeout,
            ChangeMembershipError::LearnerNotFound(_) => EtcdError::MemberNotFound,
            ChangeMembershipError::EmptyMembership(_) => {
                EtcdError::InvalidVoterSet("the voter set would be empty".into())
            }
        },
        RaftError::Fatal(e) => {
            tracing::error!(error = %e, "raft stopped");
            EtcdError::Stopped
        }
    }
}

fn is_not_leader(status: &Status) -> bool {
    status.code() == EtcdError::NotLeader.code()
        && status.message() == EtcdError::NotLeader.to_string()
}
