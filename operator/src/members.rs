//! Talking to witan members over the etcd v3 API, behind [`MemberApi`] so
//! the controller can be tested with a fake and the witan-only
//! `ChangeVoters` call can be added without touching the controller.

use std::{collections::BTreeSet, time::Duration};

use etcd_client::{Client, MemberAddOptions};
use futures::future::BoxFuture;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use witan_api::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleListRequest, AuthStatusRequest,
    AuthUserAddRequest, AuthUserGetRequest, AuthUserGrantRoleRequest, AuthUserListRequest,
    AuthenticateRequest, auth_client::AuthClient,
};
use witan_api::etcdserverpb::{StatusRequest, maintenance_client::MaintenanceClient};
use witan_api::witanpb::membership_client::MembershipClient;
use witan_api::witanpb::{ChangeVotersRequest, VotersRequest};

use crate::{
    access::{self, Access},
    auth::{AuthState, AuthStep, ROOT},
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
        access: &'a Access,
    ) -> BoxFuture<'a, Result<Option<Membership>, MemberError>>;

    /// MemberAdd as a learner; returns the new member's id.
    fn add_learner<'a>(
        &'a self,
        endpoints: &'a [String],
        access: &'a Access,
        peer_url: &'a str,
    ) -> BoxFuture<'a, Result<u64, MemberError>>;

    /// One joint change of the voting set to exactly `voters`
    /// (`witanpb.Membership/ChangeVoters`). Must be idempotent: asking
    /// again for the current or pending target finishes that change.
    fn change_voters<'a>(
        &'a self,
        endpoints: &'a [String],
        access: &'a Access,
        voters: &'a BTreeSet<u64>,
    ) -> BoxFuture<'a, Result<(), MemberError>>;

    /// MoveLeader to `to`; `endpoints` must be the leader's.
    fn move_leader<'a>(
        &'a self,
        endpoints: &'a [String],
        access: &'a Access,
        to: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>>;

    /// MemberRemove.
    fn remove_member<'a>(
        &'a self,
        endpoints: &'a [String],
        access: &'a Access,
        id: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>>;

    /// AuthStatus, RoleList, UserList and each user's roles.
    fn auth_state<'a>(
        &'a self,
        endpoints: &'a [String],
        access: &'a Access,
    ) -> BoxFuture<'a, Result<AuthState, MemberError>>;

    /// One step towards auth enabled; `password` is the new user's.
    fn auth_apply<'a>(
        &'a self,
        endpoints: &'a [String],
        access: &'a Access,
        step: &'a AuthStep,
        password: &'a str,
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
    async fn connect(&self, endpoints: &[String], access: &Access) -> Result<Client, MemberError> {
        access::connect(
            endpoints,
            access,
            self.connect_timeout,
            Some(self.request_timeout),
        )
        .await
        .map_err(|source| MemberError::Rpc {
            what: "connect",
            source,
        })
    }

    /// A channel to the first of `endpoints` that accepts a connection
    /// (over TLS with the client certificate when `access` has one), and the
    /// auth token to send on it, if auth is on.
    async fn channel(
        &self,
        endpoints: &[String],
        access: &Access,
        what: &'static str,
    ) -> Result<(Channel, Option<MetadataValue<tonic::metadata::Ascii>>), MemberError> {
        let mut last = String::from("no endpoints");
        for url in endpoints {
            // A learner refuses Authenticate: the next member may not.
            match self.plain_channel(url, access).await {
                Ok(channel) => match self.token(&channel, access).await {
                    Ok(token) => return Ok((channel, token)),
                    Err(e) => last = format!("{url}: {e}"),
                },
                Err(e) => last = e,
            }
        }
        Err(MemberError::Witan { what, detail: last })
    }

    /// A channel to `url` (over TLS when `access` has a certificate),
    /// without authenticating.
    async fn plain_channel(&self, url: &str, access: &Access) -> Result<Channel, String> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad endpoint {url}: {e}"))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout);
        if let Some(tls) = &access.tls {
            endpoint = endpoint
                .tls_config(tls.config())
                .map_err(|e| format!("TLS settings for {url}: {e}"))?;
        }
        endpoint.connect().await.map_err(|e| format!("{url}: {e}"))
    }

    /// `Maintenance.Status` of the member at `urls`, with `token`: (leader,
    /// applied index, revision). `None` when it does not answer.
    async fn status(
        &self,
        urls: &[String],
        access: &Access,
        token: Option<&MetadataValue<tonic::metadata::Ascii>>,
    ) -> Option<(u64, u64, i64)> {
        for url in urls {
            let Ok(channel) = self.plain_channel(url, access).await else {
                continue;
            };
            let Ok(answer) = MaintenanceClient::new(channel)
                .status(with_token(StatusRequest {}, token))
                .await
            else {
                continue;
            };
            let s = answer.into_inner();
            let revision = s.header.map_or(0, |h| h.revision);
            return Some((s.leader, s.raft_applied_index, revision));
        }
        None
    }

    /// Authenticate as `access`'s user; `None` without credentials or while
    /// auth is off.
    async fn token(
        &self,
        channel: &Channel,
        access: &Access,
    ) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, String> {
        let Some(credentials) = &access.credentials else {
            return Ok(None);
        };
        let answer = AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                name: credentials.user.clone(),
                password: credentials.password.clone(),
            })
            .await;
        match answer {
            Ok(response) => MetadataValue::try_from(response.into_inner().token)
                .map(Some)
                .map_err(|e| format!("the auth token is not ASCII: {e}")),
            Err(status) if status.message().contains("authentication is not enabled") => Ok(None),
            Err(status) => Err(format!(
                "authenticating as {}: {}",
                credentials.user,
                status.message()
            )),
        }
    }

    /// A `witanpb.Membership` client on the first of `endpoints` that
    /// accepts a connection, and its token.
    async fn membership(
        &self,
        endpoints: &[String],
        access: &Access,
        what: &'static str,
    ) -> Result<
        (
            MembershipClient<Channel>,
            Option<MetadataValue<tonic::metadata::Ascii>>,
        ),
        MemberError,
    > {
        let (channel, token) = self.channel(endpoints, access, what).await?;
        Ok((MembershipClient::new(channel), token))
    }

    /// The target of an interrupted joint change: the second voter set
    /// when the configuration is joint. `None` when it is uniform or the
    /// members cannot say.
    async fn joint_target(&self, endpoints: &[String], access: &Access) -> Option<BTreeSet<u64>> {
        let (mut client, token) = self.membership(endpoints, access, "Voters").await.ok()?;
        let config = client
            .voters(with_token(
                VotersRequest { linearizable: true },
                token.as_ref(),
            ))
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
        access: &Access,
    ) -> Result<Option<Membership>, MemberError> {
        let mut client = match self.connect(endpoints, access).await {
            Ok(client) => client,
            Err(error) => {
                // Handled here: no member answering is an observation, but
                // say why (a TLS or password problem looks the same).
                tracing::warn!("no member answers: {error}");
                return Ok(None);
            }
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
        let listed: Vec<(u64, String, bool, Vec<String>)> = list
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
                // Where the member says clients reach it, as any etcd client
                // would; a member that has not started yet advertises
                // nothing, and its StatefulSet address is tried instead.
                let urls = if member.client_urls().is_empty() {
                    vec![names.client_url(&name)]
                } else {
                    member.client_urls().to_vec()
                };
                (member.id(), name, member.is_learner(), urls)
            })
            .collect();
        // One token for every Status: a learner cannot authenticate, but
        // takes a token a voter issued (tokens travel through Raft).
        let token = match self.channel(endpoints, access, "Authenticate").await {
            Ok((_, token)) => token,
            Err(error) => {
                tracing::warn!("asking members' status without a token: {error}");
                None
            }
        };
        let token = token.as_ref();
        // Ask every member itself, concurrently: it is healthy only if it answers.
        let statuses = futures::future::join_all(
            listed
                .iter()
                .map(|(_, _, _, urls)| self.status(urls, access, token)),
        )
        .await;
        let seen: Vec<Seen> = listed
            .into_iter()
            .zip(statuses)
            .map(|((id, name, is_learner, _), status)| Seen {
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
            joint_target: self.joint_target(endpoints, access).await,
            cluster_id,
        }))
    }
}

impl MemberApi for EtcdMembers {
    fn observe<'a>(
        &'a self,
        names: &'a ClusterNames,
        endpoints: &'a [String],
        access: &'a Access,
    ) -> BoxFuture<'a, Result<Option<Membership>, MemberError>> {
        Box::pin(self.observe_impl(names, endpoints, access))
    }

    fn add_learner<'a>(
        &'a self,
        endpoints: &'a [String],
        access: &'a Access,
        peer_url: &'a str,
    ) -> BoxFuture<'a, Result<u64, MemberError>> {
        Box::pin(async move {
            let mut client = self.connect(endpoints, access).await?;
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
        access: &'a Access,
        voters: &'a BTreeSet<u64>,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        // Never MemberPromote one by one: that passes through an even
        // voting set. ChangeVoters is one joint change, and idempotent.
        Box::pin(async move {
            let (mut client, token) = self.membership(endpoints, access, "ChangeVoters").await?;
            let request = ChangeVotersRequest {
                voter_ids: voters.iter().copied().collect(),
            };
            client
                .change_voters(with_token(request, token.as_ref()))
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
        access: &'a Access,
        to: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        Box::pin(async move {
            let mut client = self.connect(endpoints, access).await?;
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
        access: &'a Access,
        id: u64,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        Box::pin(async move {
            let mut client = self.connect(endpoints, access).await?;
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

    fn auth_state<'a>(
        &'a self,
        endpoints: &'a [String],
        access: &'a Access,
    ) -> BoxFuture<'a, Result<AuthState, MemberError>> {
        Box::pin(self.auth_state_impl(endpoints, access))
    }

    fn auth_apply<'a>(
        &'a self,
        endpoints: &'a [String],
        access: &'a Access,
        step: &'a AuthStep,
        password: &'a str,
    ) -> BoxFuture<'a, Result<(), MemberError>> {
        Box::pin(self.auth_apply_impl(endpoints, access, step, password))
    }
}

/// A failed witan or auth RPC as a [`MemberError`].
fn witan_status(what: &'static str) -> impl Fn(tonic::Status) -> MemberError {
    move |status| MemberError::Witan {
        what,
        detail: status.message().to_string(),
    }
}

/// `message` with the auth token in metadata `token`, as etcd expects.
fn with_token<T>(message: T, token: Option<&MetadataValue<tonic::metadata::Ascii>>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("token", token.clone());
    }
    request
}

impl EtcdMembers {
    async fn auth_state_impl(
        &self,
        endpoints: &[String],
        access: &Access,
    ) -> Result<AuthState, MemberError> {
        let (channel, token) = self.channel(endpoints, access, "AuthStatus").await?;
        let mut client = AuthClient::new(channel);
        let token = token.as_ref();
        let enabled = client
            .auth_status(with_token(AuthStatusRequest {}, token))
            .await
            .map_err(witan_status("AuthStatus"))?
            .into_inner()
            .enabled;
        if enabled {
            // Nothing more is decided once auth is on (auth::next_step).
            return Ok(AuthState {
                enabled,
                ..AuthState::default()
            });
        }
        let roles = client
            .role_list(with_token(AuthRoleListRequest {}, token))
            .await
            .map_err(witan_status("RoleList"))?
            .into_inner()
            .roles
            .into_iter()
            .collect();
        let names = client
            .user_list(with_token(AuthUserListRequest {}, token))
            .await
            .map_err(witan_status("UserList"))?
            .into_inner()
            .users;
        let mut users = std::collections::BTreeMap::new();
        for name in names {
            let roles = client
                .user_get(with_token(AuthUserGetRequest { name: name.clone() }, token))
                .await
                .map_err(witan_status("UserGet"))?
                .into_inner()
                .roles
                .into_iter()
                .collect();
            users.insert(name, roles);
        }
        Ok(AuthState {
            enabled,
            roles,
            users,
        })
    }

    async fn auth_apply_impl(
        &self,
        endpoints: &[String],
        access: &Access,
        step: &AuthStep,
        password: &str,
    ) -> Result<(), MemberError> {
        let (channel, token) = self.channel(endpoints, access, "Auth").await?;
        let mut client = AuthClient::new(channel);
        let token = token.as_ref();
        match step {
            AuthStep::AddRootRole => {
                client
                    .role_add(with_token(AuthRoleAddRequest { name: ROOT.into() }, token))
                    .await
                    .map_err(witan_status("RoleAdd"))?;
            }
            AuthStep::AddUser { user } => {
                let request = AuthUserAddRequest {
                    name: user.clone(),
                    password: password.to_string(),
                    ..AuthUserAddRequest::default()
                };
                client
                    .user_add(with_token(request, token))
                    .await
                    .map_err(witan_status("UserAdd"))?;
            }
            AuthStep::GrantRoot { user } => {
                let request = AuthUserGrantRoleRequest {
                    user: user.clone(),
                    role: ROOT.into(),
                };
                client
                    .user_grant_role(with_token(request, token))
                    .await
                    .map_err(witan_status("UserGrantRole"))?;
            }
            AuthStep::Enable => {
                client
                    .auth_enable(with_token(AuthEnableRequest {}, token))
                    .await
                    .map_err(witan_status("AuthEnable"))?;
            }
            AuthStep::Done => {}
        }
        Ok(())
    }
}
