//! witan's joint voter change with real processes: 3 voters and 2 learners
//! become 5 voters in one `witanpb.Membership/ChangeVoters` call, then 3
//! again (two original members leave), while a client keeps writing. No
//! acknowledged write is lost, and MemberList never shows an even number of
//! voters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::Mutex;
use witan_node::proto::witanpb::membership_client::MembershipClient;
use witan_node::proto::witanpb::{ChangeVotersRequest, VotersRequest};
use witan_tests::{Cluster, poll_until};

/// How long a voter change may keep failing (a learner still catching up,
/// an election) before the test fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends ChangeVoters to `endpoint` until it succeeds; returns the voter
/// ids of the answer.
async fn change_voters(endpoint: &str, voter_ids: &[u64]) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
    loop {
        let attempt = async {
            let mut client = MembershipClient::connect(format!("http://{endpoint}"))
                .await
                .map_err(|e| e.to_string())?;
            client
                .change_voters(ChangeVotersRequest {
                    voter_ids: voter_ids.to_vec(),
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        };
        match attempt.await {
            Ok(resp) => {
                return resp
                    .members
                    .iter()
                    .filter(|m| !m.is_learner)
                    .map(|m| m.id)
                    .collect();
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("ChangeVoters({voter_ids:x?}) not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("ChangeVoters({voter_ids:x?}) kept failing: {e}"),
        }
    }
}

#[test]
fn three_voters_and_two_learners_become_five_voters_then_three_while_writing() {
    let mut cluster = Cluster::start_with(3, &["--max-learners", "2"]);
    let original: Vec<u64> = (0..3).map(|i| cluster.member_id(i)).collect();

    // Two learners, added and started.
    let learners: Vec<(usize, u64)> = ["node-4", "node-5"]
        .iter()
        .map(|name| cluster.add_learner(name))
        .collect();

    // One member that stays a voter throughout carries the client traffic.
    let steady = cluster.endpoint(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let voter_counts: Arc<Mutex<Vec<usize>>> = Arc::default();

    let writer = runtime.spawn({
        let (stop, acked, endpoint) = (stop.clone(), acked.clone(), steady.clone());
        async move {
            let mut client = Client::connect([endpoint], None).await.expect("connect");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("joint/{n:06}");
                // A failed put has an unknown outcome; only acks count.
                if client.put(key.as_str(), "v", None).await.is_ok() {
                    acked.lock().await.push(key);
                }
                n += 1;
            }
        }
    });
    let observer = runtime.spawn({
        let (stop, counts, endpoint) = (stop.clone(), voter_counts.clone(), steady.clone());
        async move {
            let mut client = Client::connect([endpoint], None).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                if let Ok(list) = client.member_list().await {
                    let voters = list.members().iter().filter(|m| !m.is_learner()).count();
                    counts.lock().await.push(voters);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    // 3 voters + 2 learners -> 5 voters, in one call (retried while the
    // learners catch up).
    let five: Vec<u64> = original
        .iter()
        .copied()
        .chain(learners.iter().map(|(_, id)| *id))
        .collect();
    let mut voters = runtime.block_on(change_voters(&steady, &five));
    voters.sort_unstable();
    let mut expected = five.clone();
    expected.sort_unstable();
    assert_eq!(voters, expected);

    // Sending it again is a no-op that succeeds, and the configuration is
    // one committed voter set again.
    runtime.block_on(change_voters(&steady, &five));
    let config = runtime.block_on(async {
        let mut client = MembershipClient::connect(format!("http://{steady}"))
            .await
            .expect("connect");
        client
            .voters(VotersRequest { linearizable: true })
            .await
            .expect("Voters")
            .into_inner()
    });
    assert_eq!(config.configs.len(), 1, "{config:?}");
    let mut listed = config.configs[0].voter_ids.clone();
    listed.sort_unstable();
    assert_eq!(listed, expected);
    assert!(config.committed);

    // 5 -> 3: the first two founding members leave (one of them may lead).
    let three = vec![original[2], learners[0].1, learners[1].1];
    let mut voters = runtime.block_on(change_voters(&steady, &three));
    voters.sort_unstable();
    let mut expected = three.clone();
    expected.sort_unstable();
    assert_eq!(voters, expected);
    cluster.wait_exit(0, Duration::from_secs(30));
    cluster.wait_exit(1, Duration::from_secs(30));

    // Keep writing a moment on the new voter set, then stop.
    let written_before = runtime.block_on(async { acked.lock().await.len() });
    poll_until(Duration::from_secs(30), "writes on the new voters", || {
        let now = runtime.block_on(async { acked.lock().await.len() });
        if now > written_before + 20 {
            Ok(())
        } else {
            Err(format!("{now} acked"))
        }
    });
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        writer.await.expect("writer");
        observer.await.expect("observer");
    });

    // Every acknowledged write is there, on every remaining member.
    let acked = runtime.block_on(async { acked.lock().await.clone() });
    // At least the 20 writes waited for above, on the new voter set.
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    for i in [2, learners[0].0, learners[1].0] {
        let out = cluster.ctl_on(i, &["get", "joint/", "--prefix", "--keys-only"]);
        let stored: std::collections::BTreeSet<&str> =
            out.lines().filter(|l| !l.is_empty()).collect();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|k| !stored.contains(k.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "member {i} lost acknowledged writes: {missing:?}"
        );
    }

    let counts = runtime.block_on(async { voter_counts.lock().await.clone() });
    eprintln!(
        "{} writes acknowledged; {} MemberList observations",
        acked.len(),
        counts.len()
    );
    assert!(counts.contains(&5), "never saw 5 voters: {counts:?}");
    assert!(
        counts.iter().all(|c| c % 2 == 1),
        "an even voter count was observed: {counts:?}"
    );
}
