//! The client Service: one address for applications, ready members only.

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::{
    crd::KvCluster,
    error::Result,
    names::{CLIENT_PORT, ClusterNames},
    resources::child_meta,
};

pub fn build(kvc: &KvCluster, names: &ClusterNames) -> Result<Service> {
    Ok(Service {
        metadata: child_meta(kvc, names, names.client_service())?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names.selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some("client".into()),
                port: CLIENT_PORT,
                target_port: Some(IntOrString::String("client".into())),
                ..ServicePort::default()
            }]),
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
    fn client_service_routes_port_2379_to_ready_members_only() {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let json = serde_json::to_value(build(&kvc, &names).unwrap()).unwrap();
        assert_owned(&json);
        assert_eq!(json["metadata"]["name"], "kv-client");
        assert_eq!(json["spec"]["type"], "ClusterIP");
        assert!(json["spec"].get("publishNotReadyAddresses").is_none());
        assert_eq!(json["spec"]["ports"][0]["port"], 2379);
        assert_eq!(json["spec"]["ports"][0]["targetPort"], "client");
    }
}
