//! The operator's member client against real witan processes: the joint
//! voter change it relies on (`witanpb.Membership/ChangeVoters`) grows
//! 3 voters + 2 learners to 5 voters in one call, and the observation then
//! shows a uniform configuration with five voters.

use std::collections::BTreeSet;
use std::time::Duration;

use witan_operator::{
    access::Access,
    members::{EtcdMembers, MemberApi},
};
use witan_tests::{Cluster, json, poll_until};

#[test]
fn change_voters_promotes_two_learners_at_once() {
    let mut cluster = Cluster::start_with(3, &["--max-learners", "2"]);
    let mut ids: BTreeSet<u64> = (0..3).map(|i| cluster.member_id(i)).collect();
    let mut learner = 0;
    for name in ["node-4", "node-5"] {
        let (index, id) = cluster.add_learner(name);
        ids.insert(id);
        learner = index;
    }
    // Sent to a learner, as the operator may when it picks an endpoint: the
    // learner hands it to the leader.
    let endpoints = vec![cluster.member(learner).client_url()];
    let api = EtcdMembers::default();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Learners need a moment to catch up; the call is idempotent.
    poll_until(Duration::from_secs(30), "ChangeVoters to 5", || {
        runtime
            .block_on(api.change_voters(&endpoints, &Access::default(), &ids))
            .map_err(|e| e.to_string())
    });
    let listed = json(&cluster.ctl_on(0, &["member", "list", "-w", "json"]));
    let voters = listed["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["isLearner"] != serde_json::Value::Bool(true))
        .count();
    assert_eq!(voters, 5, "{listed}");
    // An even voter set is refused with witan's message.
    let four: BTreeSet<u64> = ids.iter().copied().take(4).collect();
    let err = runtime
        .block_on(api.change_voters(&endpoints, &Access::default(), &four))
        .expect_err("an even voter set");
    assert!(err.to_string().contains("odd size"), "{err}");
}
