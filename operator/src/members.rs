//! Talking to witan members over the etcd v3 API, behind [`MemberApi`] so
//! the controller can be tested with a fake and the witan-only
//! `ChangeVoters` call can be added without touching the controller.

use std::{collections::BTreeSet, time::Duration};

use etcd_client::{Client, ConnectOptions, MemberAddOptions};
use futures::future::BoxFuture;
use tonic::transport::{Channel, Endpoint};
use witan_api::witanpb::membership_client::MembershipClient;
use witan_api::witanpb::{ChangeVotersRequest, VotersRequest};

use crate::{
    names::ClusterNames,
    observed::{Membership, ObservedMember, is_caught_up},
};

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// An etcd v3 RPC (or connecting for it) failed.
    #[error("{what}: {source}")]
    Rpc {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    /// A witan-only RPC (witanpb.Membership) failed or found no member.
    #[error("{what}: {detail}")]
    Witan { what: &'static str, detail: String },
}

/// The membership calls the operator makes. `endpoints` are client URLs;
/// calls that must reach the leader (MoveLeader) get only the leader's.
pub trait MemberApi: Send + Sync {
    /// MemberList, then each member's own Status. `Ok(None)` when no member answers.
    fn observe<'a>(
        &'a self,
        names: &'a ClusterNames,
        endpoints: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Membership>, MemberError>>;

    /// MemberAdd as a learner; returns the new member's id.
    fn add_learner<'a>(
        &'a self,
        endpoints: &'a [String],
        peer_url: &'a str,
    ) -> BoxFuture<'a, Result<u64, MemberError>>;

    /// One joint change of the voting set to exactly `voters`
    /// (`witanpb.Membership/ChangeVoters`). Must be idempotent: asking
    /// again for the current or pending target finishes that change.
    fn change_voters<'a>(
        &'a self,
        endpoints: &'a [String],
        voters: &'a BTreeSet<u64>,
    ) -> BoxFuture<'a, Result<(), MemberError>>;

    /// MoveLeader to `to`; `endpoints` must be the leader's.
    fn move_leader<'a>(
        &'a self,
        endpoints: &'a [String],
        to: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>>;

    /// MemberRemove.
    fn remove_member<'a>(
        &'a self,
        endpoints: &'a [String],
        id: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>>;
}

/// [`MemberApi`] over the `etcd-client` crate.
#[derive(Clone, Debug)]
pub struct EtcdMembers {
    /// Bound on connecting to one member.
    pub connect_timeout: Duration,
    /// Bound on one RPC.
    pub request_timeout: Duration,
}

impl Default for EtcdMembers {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl EtcdMembers {
    async fn connect(&self, endpoints: &[String]) -> Result<Client, MemberError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout);
        Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| MemberError::Rpc {
                what: "connect",
                source,
            })
    }

    /// A `witanpb.Membership` client on the first of `endpoints` that
    /// accepts a connection.
    async fn membership(
        &self,
        endpoints: &[String],
        what: &'static str,
    ) -> Result<MembershipClient<Channel>, MemberError> {
        let mut last = String::from("no endpoints");
        for url in endpoints {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| MemberError::Witan {
                    what,
                    detail: format!("bad endpoint {url}: {e}"),
                })?
                .connect_timeout(self.connect_timeout)
                .timeout(self.request_timeout);
            match endpoint.connect().await {
                Ok(channel) => return Ok(MembershipClient::new(channel)),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(MemberError::Witan { what, detail: last })
    }

    /// The target of an interrupted joint change: the second voter set
    /// when the configuration is joint. `None` when it is uniform or the
    /// members cannot say.
    async fn joint_target(&self, endpoints: &[String]) -> Option<BTreeSet<u64>> {
        let mut client = self.membership(endpoints, "Voters").await.ok()?;
        let config = client
            .voters(VotersRequest { linearizable: true })
            .await
            .ok()?
            .into_inner();
        match config.configs.as_slice() {
            [_, new] => Some(new.voter_ids.iter().copied().collect()),
            _ => None,
        }
    }

    async fn observe_impl(
        &self,
        names: &ClusterNames,
        endpoints: &[String],
    ) -> Result<Option<Membership>, MemberError> {
        let Ok(mut client) = self.connect(endpoints).await else {
            return Ok(None);
        };
        let Ok(list) = client.member_list().await else {
            return Ok(None);
        };
        let cluster_id = list.header().map(etcd_client::ResponseHeader::cluster_id);
        struct Seen {
            id: u64,
            name: String,
            is_learner: bool,
            status: Option<(u64, u64, i64)>,
        }
        let listed: Vec<(u64, String, bool)> = list
            .members()
            .iter()
            .map(|member| {
                let name = member
                    .peer_urls()
                    .iter()
                    .find_map(|url| names.member_of_peer_url(url))
                    // Not one of ours: keep what the member calls itself so
                    // a human can recognise it.
                    .unwrap_or_else(|| format!("{}#{:x}", member.name(), member.id()));
                (member.id(), name, member.is_learner())
            })
            .collect();
        // Ask every member itself, concurrently: it is healthy only if it answers.
        let statuses = futures::future::join_all(listed.iter().map(|(_, name, _)| async move {
            let mut own = self.connect(&[names.client_url(name)]).await.ok()?;
            let s = own.status().await.ok()?;
            let revision = s.header().map_or(0, etcd_client::ResponseHeader::revision);
            Some((s.leader(), s.raft_applied_index(), revision))
        }))
        .await;
        let seen: Vec<Seen> = listed
            .into_iter()
            .zip(statuses)
            .map(|((id, name, is_learner), status)| Seen {
                id,
                name,
                is_learner,
                status,
            })
            .collect();
        // The leader as most members report it.
        let leader = seen
            .iter()
            .filter_map(|s| s.status.map(|(l, _, _)| l))
            .find(|l| *l != 0);
        let leader_applied = seen
            .iter()
            .find(|s| Some(s.id) == leader)
            .and_then(|s| s.status.map(|(_, applied, _)| applied))
            .unwrap_or(0);
        let members = seen
            .into_iter()
            .map(|s| ObservedMember {
                id: s.id,
                name: s.name,
                is_learner: s.is_learner,
                is_leader: Some(s.id) == leader,
                // A voter that knows no leader cannot serve; a learner never
                // votes, so answering is all that is asked of it.
                healthy: s.status.is_some_and(|(l, _, _)| l != 0 || s.is_learner),
                caught_up: s
                    .status
                    .is_some_and(|(_, applied, _)| is_caught_up(leader_applied, applied)),
                revision: s.status.map(|(_, _, revision)| revision),
            })
            .collect();
        Ok(Some(Membership {
            members,
            joint_target: self.joint_target(endpoints).await,
            cluster_id,
        }))
    }
}

impl MemberApi for EtcdMembers {
    fn observe<'a>(
        &'a self,
        names: &'a ClusterNames,
        endpoints: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Membership>, MemberError>> {
        Box::pin(self.observe_impl(names, endpoints))
    }

    fn add_learner<'a>(
        &'a self,
        endpoints: &'a [String],
        peer_url: &'a str,
    ) -> BoxFuture<'a, Result<u64, MemberError>> {
        Box::pin(async move {
            let mut client = self.connect(endpoints).await?;
            let response = client
                .member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
                .await
                .map_err(|source| MemberError::Rpc {
                    what: "MemberAdd",
                    source,
                })?;
            Ok(response.member().map_or(0, etcd_client::Member::id))
        })
    }

    fn change_voters<'a>(
        &'a self,
        endpoints: &'a [String],
        voters: &'a BTreeSet<u64>,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        // Never MemberPromote one by one: that passes through an even
        // voting set. ChangeVoters is one joint change, and idempotent.
        Box::pin(async move {
            let mut client = self.membership(endpoints, "ChangeVoters").await?;
            client
                .change_voters(ChangeVotersRequest {
                    voter_ids: voters.iter().copied().collect(),
                })
                .await
                .map_err(|status| MemberError::Witan {
                    what: "ChangeVoters",
                    detail: status.message().to_string(),
                })?;
            Ok(())
        })
    }

    fn move_leader<'a>(
        &'a self,
        endpoints: &'a [String],
        to: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        Box::pin(async move {
            let mut client = self.connect(endpoints).await?;
            client
                .move_leader(to)
                .await
                .map_err(|source| MemberError::Rpc {
                    what: "MoveLeader",
                    source,
                })?;
            Ok(())
        })
    }

    fn remove_member<'a>(
        &'a self,
        endpoints: &'a [String],
        id: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        Box::pin(async move {
            let mut client = self.connect(endpoints).await?;
            client
                .member_remove(id)
                .await
                .map_err(|source| MemberError::Rpc {
                    what: "MemberRemove",
                    source,
                })?;
            Ok(())
        })
    }
}
