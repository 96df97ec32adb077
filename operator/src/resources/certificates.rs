//! cert-manager Certificates for `spec.tls.certManager`: the members' server
//! certificate (client port), their peer certificate, and the client
//! certificate of the operator and the backup jobs. cert-manager writes each
//! into the Secret `spec.tls` names and renews it in place; the members
//! reload it, so renewal rolls nothing.
//!
//! Built as `DynamicObject`s: the operator does not depend on cert-manager's
//! types, and applies these only when the API server serves them.

use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    core::ObjectMeta,
};
use serde_json::json;

use crate::{
    auth::OPERATOR_USER,
    crd::{ALLOWED_REPLICAS, CertManagerSpec, KvCluster, TlsSpec},
    error::Result,
    names::ClusterNames,
    resources::child_meta,
};

/// cert-manager's Certificate kind, as API discovery looks it up.
#[must_use]
pub fn gvk() -> GroupVersionKind {
    GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate")
}

/// The Certificate resource (for building objects without discovery).
#[must_use]
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&gvk(), "certificates")
}

/// Every DNS name a member may be reached by: each possible member through
/// the headless Service (up to the largest allowed size, so scaling never
/// waits for a new certificate), short and fully qualified.
fn member_dns_names(names: &ClusterNames) -> Vec<String> {
    let largest = ALLOWED_REPLICAS.iter().copied().max().unwrap_or(1);
    let mut dns = Vec::new();
    for ordinal in 0..u32::try_from(largest).unwrap_or(1) {
        let host = names.member_host(&names.member(ordinal));
        dns.push(format!("{host}.cluster.local"));
        dns.push(host);
    }
    dns
}

/// The client Service's names, from the shortest to the fully qualified.
fn client_service_dns_names(names: &ClusterNames) -> Vec<String> {
    let service = names.client_service();
    let ns = &names.namespace;
    vec![
        service.clone(),
        format!("{service}.{ns}"),
        format!("{service}.{ns}.svc"),
        format!("{service}.{ns}.svc.cluster.local"),
    ]
}

fn certificate(
    kvc: &KvCluster,
    names: &ClusterNames,
    issuer: &CertManagerSpec,
    secret: String,
    spec: serde_json::Value,
) -> Result<DynamicObject> {
    let meta: ObjectMeta = child_meta(kvc, names, secret.clone())?;
    let mut spec = match spec {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    spec.insert("secretName".into(), json!(secret));
    spec.insert(
        "issuerRef".into(),
        json!({
            "name": issuer.issuer_ref.name,
            "kind": issuer.issuer_ref.kind,
            "group": issuer.issuer_ref.group,
        }),
    );
    // A new key on every renewal; PKCS#8 is what every TLS stack reads.
    spec.insert(
        "privateKey".into(),
        json!({"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"}),
    );
    let mut object = DynamicObject::new(&secret, &api_resource()).data(json!({ "spec": spec }));
    object.metadata = meta;
    Ok(object)
}

/// The three Certificates (server, peer, operator client), each named
/// after the Secret it fills.
pub fn build(
    kvc: &KvCluster,
    names: &ClusterNames,
    tls: &TlsSpec,
    issuer: &CertManagerSpec,
) -> Result<Vec<DynamicObject>> {
    let mut server_dns = member_dns_names(names);
    server_dns.extend(client_service_dns_names(names));
    server_dns.push("localhost".into());
    let server = certificate(
        kvc,
        names,
        issuer,
        tls.server_secret(&names.name),
        json!({
            "commonName": names.name,
            "dnsNames": server_dns,
            "ipAddresses": ["127.0.0.1", "::1"],
            "usages": ["digital signature", "key encipherment", "server auth"],
        }),
    )?;
    let peer = certificate(
        kvc,
        names,
        issuer,
        tls.peer_secret(&names.name),
        json!({
            "commonName": names.name,
            "dnsNames": member_dns_names(names),
            // Peers present it both as servers and as clients.
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        }),
    )?;
    let operator = certificate(
        kvc,
        names,
        issuer,
        tls.operator_secret(&names.name),
        json!({
            // With client-cert auth the CN is the etcd user: the operator's own.
            "commonName": OPERATOR_USER,
            "usages": ["digital signature", "key encipherment", "client auth"],
        }),
    )?;
    Ok(vec![server, peer, operator])
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::{
        crd::IssuerRef,
        resources::testing::{assert_owned, kvc, strings},
    };

    fn issuer() -> CertManagerSpec {
        CertManagerSpec {
            issuer_ref: IssuerRef {
                name: "ca".into(),
                kind: "ClusterIssuer".into(),
                group: "cert-manager.io".into(),
            },
        }
    }

    fn built() -> Vec<Value> {
        let mut kvc = kvc(3);
        kvc.spec.tls = Some(TlsSpec::default());
        let names = ClusterNames::of(&kvc).unwrap();
        build(&kvc, &names, &TlsSpec::default(), &issuer())
            .unwrap()
            .into_iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect()
    }

    #[test]
    fn three_owned_certificates_fill_the_secrets_the_pods_mount() {
        let certs = built();
        assert_eq!(certs.len(), 3);
        for (cert, secret) in certs
            .iter()
            .zip(["kv-server-tls", "kv-peer-tls", "kv-operator-tls"])
        {
            assert_owned(cert);
            assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
            assert_eq!(cert["kind"], "Certificate");
            assert_eq!(cert["metadata"]["name"], secret);
            assert_eq!(cert["spec"]["secretName"], secret);
            assert_eq!(
                cert["spec"]["issuerRef"],
                json!({"name": "ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
            );
            assert_eq!(cert["spec"]["privateKey"]["rotationPolicy"], "Always");
        }
    }

    #[test]
    fn the_server_certificate_names_every_member_the_client_service_and_localhost() {
        let certs = built();
        let dns = strings(&certs[0]["spec"]["dnsNames"]);
        for ordinal in 0..9 {
            let host = format!("kv-{ordinal}.kv-peer.prod.svc");
            assert!(dns.contains(&host.as_str()), "{host}");
            let fqdn = format!("{host}.cluster.local");
            assert!(dns.contains(&fqdn.as_str()), "{fqdn}");
        }
        for name in [
            "kv-client",
            "kv-client.prod",
            "kv-client.prod.svc",
            "kv-client.prod.svc.cluster.local",
            "localhost",
        ] {
            assert!(dns.contains(&name), "{name}");
        }
        assert!(strings(&certs[0]["spec"]["ipAddresses"]).contains(&"127.0.0.1"));
        assert!(strings(&certs[0]["spec"]["usages"]).contains(&"server auth"));
    }

    #[test]
    fn peers_authenticate_both_ways_and_the_operator_is_a_client_named_after_its_user() {
        let certs = built();
        let peer = strings(&certs[1]["spec"]["usages"]);
        assert!(peer.contains(&"server auth") && peer.contains(&"client auth"));
        assert!(strings(&certs[1]["spec"]["dnsNames"]).contains(&"kv-2.kv-peer.prod.svc"));
        assert_eq!(certs[2]["spec"]["commonName"], "witan-operator");
        assert_eq!(
            strings(&certs[2]["spec"]["usages"]),
            ["digital signature", "key encipherment", "client auth"]
        );
        assert!(certs[2]["spec"].get("dnsNames").is_none());
    }
}
