//! The headless Service: one stable DNS name per member
//! (`<pod>.<name>-peer.<ns>.svc`), used for peer and member client URLs.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

use crate::{
    crd::KvCluster,
    error::Result,
    names::{CLIENT_PORT, ClusterNames, PEER_PORT},
    resources::child_meta,
};

pub fn build(kvc: &KvCluster, names: &ClusterNames) -> Result<Service> {
    Ok(Service {
        metadata: child_meta(kvc, names, names.headless_service())?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Members must resolve each other before they are ready: a
            // member is not ready until there is a leader, and there is no
            // leader until members can reach each other.
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector_labels()),
            ports: Some(vec![
                ServicePort {
                    name: Some("client".into()),
                    port: CLIENT_PORT,
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("peer".into()),
                    port: PEER_PORT,
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{assert_owned, kvc};

    #[test]
    fn headless_service_publishes_not_ready_members_on_both_ports() {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let json = serde_json::to_value(build(&kvc, &names).unwrap()).unwrap();
        assert_owned(&json);
        assert_eq!(json["metadata"]["name"], "kv-peer");
        assert_eq!(json["spec"]["clusterIP"], "None");
        assert_eq!(json["spec"]["publishNotReadyAddresses"], true);
        assert_eq!(json["spec"]["selector"]["app.kubernetes.io/instance"], "kv");
        assert_eq!(json["spec"]["ports"][0]["port"], 2379);
        assert_eq!(json["spec"]["ports"][1]["port"], 2380);
    }
}
