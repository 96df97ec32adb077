//! Names, labels, URLs and the owner reference of one KvCluster's children.
//!
//! Everything the builders and the planner need to agree on lives here, so a
//! pod name, its peer URL and the member name Raft knows are computed once.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::{
    crd::KvCluster,
    error::{Error, Result},
};

/// Client port of every member (etcd's).
pub const CLIENT_PORT: i32 = 2379;
/// Peer (Raft) port of every member (etcd's).
pub const PEER_PORT: i32 = 2380;
/// Plain-http port of `/metrics` and the health endpoints when the client
/// port demands TLS (etcd's `--listen-metrics-urls`, usually 2381), so
/// kubelet probes and Prometheus need no client certificate.
pub const METRICS_PORT: i32 = 2381;
/// Image repository used when the spec names no image.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "witan";
/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "witan-operator";

/// The identity of one KvCluster and the names derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNames {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `spec.tls` is set: every client and peer URL is https.
    pub tls: bool,
}

impl ClusterNames {
    /// Names for `kvc`; fails if the object lacks a namespace or uid (it
    /// always has both once stored by the API server).
    pub fn of(kvc: &KvCluster) -> Result<Self> {
        let namespace = kvc
            .namespace()
            .ok_or_else(|| Error::InvalidResource("KvCluster has no namespace".into()))?;
        let uid = kvc
            .uid()
            .ok_or_else(|| Error::InvalidResource("KvCluster has no uid".into()))?;
        Ok(Self {
            name: kvc.name_any(),
            namespace,
            uid,
            tls: kvc.spec.tls.is_some(),
        })
    }

    /// The StatefulSet (and PodDisruptionBudget) name.
    #[must_use]
    pub fn statefulset(&self) -> String {
        self.name.clone()
    }

    /// The client Service: what applications connect to.
    #[must_use]
    pub fn client_service(&self) -> String {
        format!("{}-client", self.name)
    }

    /// The headless Service that gives each member a stable DNS name.
    #[must_use]
    pub fn headless_service(&self) -> String {
        format!("{}-peer", self.name)
    }

    #[must_use]
    pub fn configmap(&self) -> String {
        format!("{}-config", self.name)
    }

    #[must_use]
    pub fn pdb(&self) -> String {
        self.name.clone()
    }

    /// Pod (and Raft member) name of the member with this StatefulSet ordinal.
    #[must_use]
    pub fn member(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    /// The ordinal of a member name of this cluster (`name-3` → 3).
    #[must_use]
    pub fn ordinal_of(&self, member: &str) -> Option<u32> {
        let rest = member.strip_prefix(&self.name)?.strip_prefix('-')?;
        // Reject "+3", "03" and the like: only the form `member()` produces.
        let ordinal: u32 = rest.parse().ok()?;
        (ordinal.to_string() == rest).then_some(ordinal)
    }

    /// Stable DNS name of a member through the headless Service.
    #[must_use]
    pub fn member_host(&self, member: &str) -> String {
        format!(
            "{member}.{}.{}.svc",
            self.headless_service(),
            self.namespace
        )
    }

    /// `https` with `spec.tls`, else `http`.
    #[must_use]
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    #[must_use]
    pub fn peer_url(&self, member: &str) -> String {
        format!(
            "{}://{}:{PEER_PORT}",
            self.scheme(),
            self.member_host(member)
        )
    }

    #[must_use]
    pub fn client_url(&self, member: &str) -> String {
        format!(
            "{}://{}:{CLIENT_PORT}",
            self.scheme(),
            self.member_host(member)
        )
    }

    /// The client Service's URL (what backup jobs connect to).
    #[must_use]
    pub fn client_service_url(&self) -> String {
        format!(
            "{}://{}.{}.svc:{CLIENT_PORT}",
            self.scheme(),
            self.client_service(),
            self.namespace
        )
    }

    /// The member a peer URL belongs to, if it is one of this cluster's.
    /// MemberList reports members that have not started yet with an empty
    /// name, so the operator identifies members by peer URL.
    #[must_use]
    pub fn member_of_peer_url(&self, url: &str) -> Option<String> {
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))?
            .split(':')
            .next()?;
        let suffix = format!(".{}.{}.svc", self.headless_service(), self.namespace);
        let member = host.strip_suffix(suffix.as_str())?;
        self.ordinal_of(member).map(|_| member.to_string())
    }

    /// The cluster token: unique to this incarnation (the uid), so volumes
    /// left behind by a deleted cluster of the same name can never join.
    #[must_use]
    pub fn cluster_token(&self) -> String {
        format!("{}-{}-{}", self.namespace, self.name, self.uid)
    }

    /// Labels that select this cluster's member pods. Never change them:
    /// a StatefulSet's selector is immutable.
    #[must_use]
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "witan".to_string()),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
        ])
    }

    /// The selector as the string the scale subresource reports.
    #[must_use]
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Labels of every child object.
    #[must_use]
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".into(),
            "witan-operator".into(),
        );
        labels.insert("app.kubernetes.io/component".into(), "kv".into());
        labels
    }
}

/// Controller owner reference to `kvc`: deleting the KvCluster deletes the child.
pub fn owner_reference(kvc: &KvCluster) -> Result<OwnerReference> {
    kvc.controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidResource("KvCluster has no uid for an owner reference".into()))
}

/// The image a KvCluster's members run.
#[must_use]
pub fn image(kvc: &KvCluster) -> String {
    if let Some(image) = &kvc.spec.image {
        return image.clone();
    }
    let version = kvc
        .spec
        .version
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    format!("{DEFAULT_IMAGE_REPOSITORY}:{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ClusterNames {
        ClusterNames {
            name: "kv".into(),
            namespace: "prod".into(),
            uid: "u-1".into(),
            tls: false,
        }
    }

    #[test]
    fn member_urls_go_through_the_headless_service() {
        let n = names();
        assert_eq!(n.peer_url("kv-2"), "http://kv-2.kv-peer.prod.svc:2380");
        assert_eq!(n.client_url("kv-0"), "http://kv-0.kv-peer.prod.svc:2379");
        assert_eq!(n.client_service_url(), "http://kv-client.prod.svc:2379");
    }

    #[test]
    fn with_tls_every_url_is_https_and_still_maps_back() {
        let n = ClusterNames {
            tls: true,
            ..names()
        };
        assert_eq!(n.peer_url("kv-2"), "https://kv-2.kv-peer.prod.svc:2380");
        assert_eq!(n.client_url("kv-0"), "https://kv-0.kv-peer.prod.svc:2379");
        assert_eq!(n.client_service_url(), "https://kv-client.prod.svc:2379");
        assert_eq!(
            n.member_of_peer_url(&n.peer_url("kv-1")).as_deref(),
            Some("kv-1")
        );
    }

    #[test]
    fn a_peer_url_maps_back_to_its_member() {
        let n = names();
        assert_eq!(
            n.member_of_peer_url(&n.peer_url("kv-4")).as_deref(),
            Some("kv-4")
        );
        assert_eq!(
            n.member_of_peer_url("http://kv-4.other-peer.prod.svc:2380"),
            None
        );
        assert_eq!(
            n.member_of_peer_url("http://kv-x.kv-peer.prod.svc:2380"),
            None
        );
    }

    #[test]
    fn ordinals_are_parsed_only_from_names_this_cluster_makes() {
        let n = names();
        assert_eq!(n.ordinal_of("kv-3"), Some(3));
        assert_eq!(n.ordinal_of("kv-03"), None);
        assert_eq!(n.ordinal_of("kv-+3"), None);
        assert_eq!(n.ordinal_of("kvx-3"), None);
        assert_eq!(n.ordinal_of("kv-client"), None);
    }

    #[test]
    fn the_token_is_unique_to_the_incarnation() {
        let mut other = names();
        other.uid = "u-2".into();
        assert_ne!(names().cluster_token(), other.cluster_token());
    }

    #[test]
    fn selector_string_matches_selector_labels() {
        assert_eq!(
            names().selector_string(),
            "app.kubernetes.io/instance=kv,app.kubernetes.io/name=witan"
        );
    }
}
