//! The ConfigMap every member reads its `--initial-cluster*` flags from
//! (as `WITAN_*` environment variables).
//!
//! The flags only matter the first time a member starts: a member with data
//! keeps its identity. So the operator rewrites this ConfigMap before each
//! membership step (etcd-operator does the same): founding members see
//! `new` and the founding set; a member added later sees `existing` and the
//! members Raft knows, itself included.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::{crd::KvCluster, error::Result, names::ClusterNames, resources::child_meta};

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    #[must_use]
    pub fn as_flag(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// What a member starting for the first time is told about the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialCluster {
    pub state: ClusterState,
    /// Member names, in order.
    pub members: Vec<String>,
}

pub fn build(kvc: &KvCluster, names: &ClusterNames, initial: &InitialCluster) -> Result<ConfigMap> {
    let cluster = initial
        .members
        .iter()
        .map(|m| format!("{m}={}", names.peer_url(m)))
        .collect::<Vec<_>>()
        .join(",");
    let data = BTreeMap::from([
        ("WITAN_INITIAL_CLUSTER".to_string(), cluster),
        (
            "WITAN_INITIAL_CLUSTER_STATE".to_string(),
            initial.state.as_flag().to_string(),
        ),
        (
            "WITAN_INITIAL_CLUSTER_TOKEN".to_string(),
            names.cluster_token(),
        ),
    ]);
    Ok(ConfigMap {
        metadata: child_meta(kvc, names, names.configmap())?,
        data: Some(data),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{assert_owned, kvc};

    #[test]
    fn founding_members_are_told_to_bootstrap_together() {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let initial = InitialCluster {
            state: ClusterState::New,
            members: vec!["kv-0".into(), "kv-1".into(), "kv-2".into()],
        };
        let json = serde_json::to_value(build(&kvc, &names, &initial).unwrap()).unwrap();
        assert_owned(&json);
        assert_eq!(json["metadata"]["name"], "kv-config");
        assert_eq!(
            json["data"]["WITAN_INITIAL_CLUSTER"],
            "kv-0=http://kv-0.kv-peer.prod.svc:2380,kv-1=http://kv-1.kv-peer.prod.svc:2380,\
             kv-2=http://kv-2.kv-peer.prod.svc:2380"
        );
        assert_eq!(json["data"]["WITAN_INITIAL_CLUSTER_STATE"], "new");
        assert_eq!(json["data"]["WITAN_INITIAL_CLUSTER_TOKEN"], "prod-kv-uid-1");
    }

    #[test]
    fn a_joining_member_is_told_the_cluster_exists() {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let initial = InitialCluster {
            state: ClusterState::Existing,
            members: vec!["kv-0".into(), "kv-1".into()],
        };
        let cm = build(&kvc, &names, &initial).unwrap();
        let data = cm.data.unwrap();
        assert_eq!(data["WITAN_INITIAL_CLUSTER_STATE"], "existing");
        assert!(data["WITAN_INITIAL_CLUSTER"].ends_with("kv-1=http://kv-1.kv-peer.prod.svc:2380"));
    }
}
