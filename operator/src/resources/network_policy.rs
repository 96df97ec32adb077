//! The optional NetworkPolicy of a KvCluster (`spec.networkPolicy`): the
//! member pods accept only
//! - on the client port: the operator, this cluster's backup jobs, the
//!   members themselves and the peers the user lists in `clients`;
//! - on the peer port: the members of this cluster;
//! - on the metrics port (with TLS): the `monitoring` peers. Without TLS
//!   `/metrics` is served on the client port, so `monitoring` joins the
//!   client rule instead.
//!
//! A rule with an empty `from` would admit everyone, so a port nobody is
//! listed for gets no rule at all (and is closed).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::{
    crd::{KvCluster, NetworkPolicySpec as PolicyChoice},
    error::Result,
    names::{CLIENT_PORT, ClusterNames, METRICS_PORT, PEER_PORT},
    resources::{child_meta, cronjob::BACKUP_OF_LABEL},
};

/// The policy's name (one per KvCluster).
#[must_use]
pub fn name(names: &ClusterNames) -> String {
    names.name.clone()
}

/// The operator's pods as a NetworkPolicy peer: `labels` in `namespace`
/// (every namespace when `None`).
#[must_use]
pub fn operator_peer(
    namespace: Option<&str>,
    labels: BTreeMap<String, String>,
) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        }),
        namespace_selector: Some(LabelSelector {
            match_labels: namespace.map(|ns| {
                BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())])
            }),
            match_expressions: None,
        }),
        ip_block: None,
    }
}

fn pods(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn port(number: i32) -> Option<Vec<NetworkPolicyPort>> {
    Some(vec![NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some("TCP".into()),
        end_port: None,
    }])
}

/// The NetworkPolicy of `kvc` when `spec.networkPolicy.enabled`, else `None`.
pub fn build(
    kvc: &KvCluster,
    names: &ClusterNames,
    choice: &PolicyChoice,
    operator: &NetworkPolicyPeer,
) -> Result<Option<NetworkPolicy>> {
    if !choice.enabled {
        return Ok(None);
    }
    let members = pods(names.selector_labels());
    let backups = pods(BTreeMap::from([(
        BACKUP_OF_LABEL.to_string(),
        names.name.clone(),
    )]));
    let mut clients = vec![operator.clone(), backups, members.clone()];
    clients.extend(choice.clients.iter().cloned());
    let mut ingress = Vec::new();
    let dedicated_metrics = kvc.spec.tls.is_some();
    if !dedicated_metrics {
        clients.extend(choice.monitoring.iter().cloned());
    }
    ingress.push(NetworkPolicyIngressRule {
        from: Some(clients),
        ports: port(CLIENT_PORT),
    });
    ingress.push(NetworkPolicyIngressRule {
        from: Some(vec![members]),
        ports: port(PEER_PORT),
    });
    if dedicated_metrics && !choice.monitoring.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(choice.monitoring.clone()),
            ports: port(METRICS_PORT),
        });
    }
    Ok(Some(NetworkPolicy {
        metadata: child_meta(kvc, names, name(names))?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        crd::TlsSpec,
        resources::testing::{assert_owned, kvc},
    };

    fn operator() -> NetworkPolicyPeer {
        operator_peer(
            Some("witan-system"),
            BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "witan-operator".to_string(),
            )]),
        )
    }

    fn monitoring() -> NetworkPolicyPeer {
        NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    "monitoring".to_string(),
                )])),
                match_expressions: None,
            }),
            ..NetworkPolicyPeer::default()
        }
    }

    fn app() -> NetworkPolicyPeer {
        pods(BTreeMap::from([("role".to_string(), "api".to_string())]))
    }

    fn policy(kvc: &KvCluster, choice: &PolicyChoice) -> Option<Value> {
        let names = ClusterNames::of(kvc).unwrap();
        build(kvc, &names, choice, &operator())
            .unwrap()
            .map(|p| serde_json::to_value(p).unwrap())
    }

    fn enabled() -> PolicyChoice {
        PolicyChoice {
            enabled: true,
            clients: vec![app()],
            monitoring: vec![monitoring()],
        }
    }

    fn rule_for(policy: &Value, port: i32) -> Option<Value> {
        policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ports"][0]["port"] == port)
            .cloned()
    }

    #[test]
    fn disabled_means_no_policy() {
        assert!(policy(&kvc(3), &PolicyChoice::default()).is_none());
    }

    #[test]
    fn with_tls_clients_peers_and_monitoring_each_get_only_their_port() {
        let mut kvc = kvc(3);
        kvc.spec.tls = Some(TlsSpec::default());
        let p = policy(&kvc, &enabled()).unwrap();
        assert_owned(&p);
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            p["spec"]["podSelector"]["matchLabels"],
            json!({"app.kubernetes.io/instance": "kv", "app.kubernetes.io/name": "witan"})
        );
        let members = json!({"podSelector": {"matchLabels":
            {"app.kubernetes.io/instance": "kv", "app.kubernetes.io/name": "witan"}}});
        let client = rule_for(&p, 2379).unwrap();
        assert_eq!(
            client["from"],
            json!([
                {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "witan-operator"}},
                 "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "witan-system"}}},
                {"podSelector": {"matchLabels": {"witan.io/backup-of": "kv"}}},
                members,
                {"podSelector": {"matchLabels": {"role": "api"}}},
            ])
        );
        assert_eq!(rule_for(&p, 2380).unwrap()["from"], json!([members]));
        assert_eq!(
            rule_for(&p, 2381).unwrap()["from"],
            json!([serde_json::to_value(monitoring()).unwrap()])
        );
        assert_eq!(p["spec"]["ingress"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn without_tls_monitoring_scrapes_the_client_port() {
        let p = policy(&kvc(3), &enabled()).unwrap();
        let client = rule_for(&p, 2379).unwrap();
        assert!(
            client["from"]
                .as_array()
                .unwrap()
                .contains(&serde_json::to_value(monitoring()).unwrap())
        );
        assert!(rule_for(&p, 2381).is_none());
    }

    #[test]
    fn no_rule_ever_has_an_empty_from_which_would_admit_everyone() {
        let mut kvc = kvc(3);
        kvc.spec.tls = Some(TlsSpec::default());
        let bare = PolicyChoice {
            enabled: true,
            ..PolicyChoice::default()
        };
        let p = policy(&kvc, &bare).unwrap();
        for rule in p["spec"]["ingress"].as_array().unwrap() {
            assert!(!rule["from"].as_array().unwrap().is_empty(), "{rule}");
        }
        // Nobody listed for metrics: the port is closed, not open.
        assert!(rule_for(&p, 2381).is_none());
        // The operator can always reach the client port.
        assert_eq!(
            rule_for(&p, 2379).unwrap()["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "witan-system"
        );
    }
}
