//! The PodDisruptionBudget: voluntary disruptions (drains, evictions) may
//! take at most one member at a time, so a quorum always survives them.

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::{crd::KvCluster, error::Result, names::ClusterNames, resources::child_meta};

pub fn build(kvc: &KvCluster, names: &ClusterNames) -> Result<PodDisruptionBudget> {
    Ok(PodDisruptionBudget {
        metadata: child_meta(kvc, names, names.pdb())?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{assert_owned, kvc};

    #[test]
    fn pdb_allows_one_member_down_at_a_time() {
        let kvc = kvc(5);
        let names = ClusterNames::of(&kvc).unwrap();
        let json = serde_json::to_value(build(&kvc, &names).unwrap()).unwrap();
        assert_owned(&json);
        assert_eq!(json["spec"]["maxUnavailable"], 1);
        assert!(json["spec"].get("minAvailable").is_none());
        assert_eq!(
            json["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "kv"
        );
    }
}
