//! How a member started with `--initial-cluster-state existing` finds its
//! place: it asks the running members (the `--initial-cluster` URLs) for the
//! membership, and takes the id the cluster gave its peer URLs when it was
//! added with MemberAdd. Raft then brings it up to date by log or snapshot.

use std::time::Duration;

use crate::config::Config;
use crate::proto::etcdserverpb::Member as PbMember;
use crate::proto::witanpb::{ClusterMembersRequest, ClusterMembersResponse, MemberIdentity};
use crate::raft::network::PeerChannels;
use crate::raft::types::MemberNode;

/// How long a joining member keeps asking before it gives up: long enough
/// for peers that start at the same time (a StatefulSet) to come up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two rounds of asking.
const JOIN_RETRY: Duration = Duration::from_millis(500);
/// How long one peer may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "could not get the cluster's membership from any of {peers:?} within {JOIN_TIMEOUT:?} (last error: {last_error})"
    )]
    NoPeerAnswered {
        peers: Vec<String>,
        last_error: String,
    },
    #[error(
        "no member of the running cluster has the peer URLs {urls:?}: add this member first (etcdctl member add NAME --peer-urls=...), then start it with --initial-cluster-state existing"
    )]
    NotAMember { urls: Vec<String> },
    #[error("--initial-cluster names no other member to join through")]
    NoPeers,
}

/// The member whose peer URLs are exactly `own_urls` (in any order).
pub fn find_self(members: &[PbMember], own_urls: &[String]) -> Option<u64> {
    let mut own: Vec<&String> = own_urls.iter().collect();
    own.sort_unstable();
    members.iter().find_map(|m| {
        let mut urls: Vec<&String> = m.peer_ur_ls.iter().collect();
        urls.sort_unstable();
        (urls == own).then_some(m.id)
    })
}

/// Peer URLs of the other members named in `--initial-cluster`.
fn other_peers(config: &Config) -> Vec<String> {
    config
        .initial_cluster
        .values()
        .flatten()
        .filter(|url| !config.initial_advertise_peer_urls.contains(url))
        .cloned()
        .collect()
}

/// Asks the member at `url` for the membership it knows.
pub async fn ask(channels: &PeerChannels, url: &str) -> Result<ClusterMembersResponse, String> {
    let node = MemberNode {
        peer_urls: vec![url.to_string()],
    };
    let mut client = channels.client(&node)?;
    let mut request = tonic::Request::new(ClusterMembersRequest {});
    request.set_timeout(ASK_TIMEOUT);
    client
        .cluster_members(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("{url}: {}", status.message()))
}

/// This member's identity in the running cluster it joins.
pub async fn discover_identity(
    config: &Config,
    channels: &PeerChannels,
) -> Result<MemberIdentity, JoinError> {
    let peers = other_peers(config);
    if peers.is_empty() {
        return Err(JoinError::NoPeers);
    }
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut last_error = String::from("none answered yet");
    loop {
        for url in &peers {
            match ask(channels, url).await {
                // A member that has not joined yet itself knows nothing.
                Ok(answer) if answer.members.is_empty() => {
                    last_error = format!("{url}: knows no membership yet");
                }
                Ok(answer) => {
                    let own = &config.initial_advertise_peer_urls;
                    let member_id = find_self(&answer.members, own)
                        .ok_or_else(|| JoinError::NotAMember { urls: own.clone() })?;
                    tracing::info!(
                        via = %url,
                        member = %format!("{member_id:x}"),
                        cluster = %format!("{:x}", answer.cluster_id),
                        "joining a running cluster"
                    );
                    return Ok(MemberIdentity {
                        member_id,
                        cluster_id: answer.cluster_id,
                        name: config.name.clone(),
                    });
                }
                Err(e) => last_error = e,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JoinError::NoPeerAnswered { peers, last_error });
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, urls: &[&str]) -> PbMember {
        PbMember {
            id,
            peer_ur_ls: urls.iter().map(|u| u.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_member_is_found_by_its_exact_set_of_peer_urls() {
        let members = [
            member(1, &["http://a:1"]),
            member(2, &["http://b:1", "http://b:2"]),
        ];
        let own = |urls: &[&str]| urls.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        assert_eq!(find_self(&members, &own(&["http://a:1"])), Some(1));
        assert_eq!(
            find_self(&members, &own(&["http://b:2", "http://b:1"])),
            Some(2)
        );
        assert_eq!(find_self(&members, &own(&["http://b:1"])), None);
        assert_eq!(find_self(&members, &own(&["http://c:1"])), None);
    }
}
