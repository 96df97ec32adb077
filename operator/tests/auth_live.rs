//! The operator's auth steps against real witan processes: driving
//! `auth::next_step` with `EtcdMembers` turns authentication on from
//! nothing (role root, user root, the operator's user, both granted root,
//! AuthEnable); then etcdctl without a user is refused, root's password
//! works, and the operator still observes the members and changes voters as
//! its own user, while the same calls without credentials are refused. A
//! learner (which refuses Authenticate, as in etcd) is added by the
//! operator and observed healthy with a token a voter issued.

mod support;

use std::{collections::BTreeSet, time::Duration};

use support::turn_auth_on;

use witan_operator::{
    access::{Access, Credentials},
    auth::{self, AuthStep, OPERATOR_USER, ROOT},
    members::{EtcdMembers, MemberApi},
    names::ClusterNames,
};
use witan_tests::{Cluster, poll_until};

const ROOT_PASSWORD: &str = "root-password";
const OPERATOR_PASSWORD: &str = "operator-password";

#[test]
fn the_operator_turns_auth_on_then_works_as_its_own_user() {
    let mut cluster = Cluster::start(3);
    let endpoints: Vec<String> = cluster.members().iter().map(|m| m.client_url()).collect();
    let api = EtcdMembers::default();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let operator = Access {
        tls: None,
        credentials: Some(Credentials {
            user: OPERATOR_USER.into(),
            password: OPERATOR_PASSWORD.into(),
        }),
    };

    // What the controller does (controller/security.rs).
    let steps = turn_auth_on(
        &runtime,
        &api,
        &endpoints,
        &operator,
        ROOT_PASSWORD,
        &cluster,
    );
    assert_eq!(steps.len(), auth::MAX_STEPS, "{steps:?}");
    assert_eq!(steps.last(), Some(&AuthStep::Enable));
    // Read again, as the operator: on, and nothing more to do.
    let state = runtime
        .block_on(api.auth_state(&endpoints, &operator))
        .expect("auth state as the operator");
    assert!(state.enabled);

    // etcdctl without a user is refused; root with its password is served.
    cluster.expect_err(cluster.run(&cluster.endpoints(), &["get", "k"], None));
    let root = format!("--user={ROOT}:{ROOT_PASSWORD}");
    cluster.expect_ok(cluster.run(&cluster.endpoints(), &[&root, "put", "k", "v"], None));

    // The operator observes every member healthy as its own user...
    let names = ClusterNames {
        name: "kv".into(),
        namespace: "test".into(),
        uid: "u".into(),
        tls: false,
    };
    let membership = runtime
        .block_on(api.observe(&names, &endpoints, &operator))
        .expect("observe")
        .expect("members answer");
    assert_eq!(membership.members.len(), 3);
    assert!(
        membership.members.iter().all(|m| m.healthy),
        "{membership:?}"
    );
    // ...and may change voters (asking for the current set is a no-op),
    // which the anonymous are refused.
    let voters: BTreeSet<u64> = membership.members.iter().map(|m| m.id).collect();
    runtime
        .block_on(api.change_voters(&endpoints, &operator, &voters))
        .expect("ChangeVoters as the operator");
    let anonymous = Access::default();
    runtime
        .block_on(api.change_voters(&endpoints, &anonymous, &voters))
        .expect_err("ChangeVoters without a user");
    let wrong = Access {
        tls: None,
        credentials: Some(Credentials {
            user: OPERATOR_USER.into(),
            password: "wrong".into(),
        }),
    };
    runtime
        .block_on(api.change_voters(&endpoints, &wrong, &voters))
        .expect_err("ChangeVoters with a wrong password");

    // A learner, added as the operator does, and listed first: the operator
    // authenticates on a voter and the learner answers Status with that token.
    let joining = cluster.prepare_joining("node-4");
    let peer_url = cluster.member(joining).peer_url();
    let learner = runtime
        .block_on(api.add_learner(&endpoints, &operator, &peer_url))
        .expect("MemberAdd as the operator");
    cluster.spawn(joining);
    let mut with_learner = vec![cluster.member(joining).client_url()];
    with_learner.extend(endpoints.iter().cloned());
    poll_until(
        Duration::from_secs(30),
        "the learner observed healthy",
        || {
            let membership = runtime
                .block_on(api.observe(&names, &with_learner, &operator))
                .map_err(|e| e.to_string())?
                .ok_or("no member answers")?;
            let found = membership.members.iter().find(|m| m.id == learner);
            match found {
                Some(m) if m.is_learner && m.healthy => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
}
