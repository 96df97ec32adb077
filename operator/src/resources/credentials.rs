//! The Secret holding the operator's etcd user and its generated password
//! (`spec.auth`). Owned by the KvCluster; the operator creates it once and
//! only reads it afterwards, and the backup jobs read it by reference.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use crate::{
    auth::{OPERATOR_USER, PASSWORD_KEY, USER_KEY, credentials_secret},
    crd::KvCluster,
    error::Result,
    names::ClusterNames,
    resources::child_meta,
};

/// The credentials Secret with `password`.
pub fn build(kvc: &KvCluster, names: &ClusterNames, password: &str) -> Result<Secret> {
    Ok(Secret {
        metadata: child_meta(kvc, names, credentials_secret(&names.name))?,
        type_: Some("kubernetes.io/basic-auth".into()),
        string_data: Some(BTreeMap::from([
            (USER_KEY.to_string(), OPERATOR_USER.to_string()),
            (PASSWORD_KEY.to_string(), password.to_string()),
        ])),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources::testing::{assert_owned, kvc};

    #[test]
    fn an_owned_basic_auth_secret_with_the_operators_user() {
        let kvc = kvc(3);
        let names = ClusterNames::of(&kvc).unwrap();
        let secret = serde_json::to_value(build(&kvc, &names, "pw").unwrap()).unwrap();
        assert_owned(&secret);
        assert_eq!(secret["metadata"]["name"], "kv-operator-auth");
        assert_eq!(secret["type"], "kubernetes.io/basic-auth");
        assert_eq!(
            secret["stringData"],
            json!({"username": "witan-operator", "password": "pw"})
        );
    }
}
