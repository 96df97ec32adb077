//! The checkers on hand-made histories: linearizable ones pass, each kind
//! of broken promise is reported.

use crate::checker::check;
use crate::history::*;
use crate::violation::Kind;

const MS: Time = 1_000_000;

fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64) -> Kv {
    Kv {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: 0,
    }
}

struct Builder {
    h: History,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            h: History {
                prefix: "p/".into(),
                start_revision: 1,
                ..History::default()
            },
        }
    }

    fn op(&mut self, invoke: Time, ret: Option<Time>, request: Request, outcome: Outcome) {
        let id = self.h.ops.len();
        self.h.ops.push(Op {
            id,
            client: id,
            member: 0,
            invoke: invoke * MS,
            ret: ret.map(|r| r * MS),
            request,
            outcome,
        });
    }

    fn put(&mut self, t: Time, r: Time, key: &str, value: &str, rev: i64, prev: Option<Kv>) {
        self.op(
            t,
            Some(r),
            Request::Put {
                key: key.into(),
                value: value.into(),
                lease: 0,
            },
            Outcome::Ok(Response::Put {
                revision: rev,
                prev,
            }),
        );
    }

    fn get(&mut self, t: Time, r: Time, key: &str, rev: i64, kvs: Vec<Kv>) {
        self.op(
            t,
            Some(r),
            Request::Get {
                key: key.into(),
                prefix: false,
                serializable: false,
            },
            Outcome::Ok(Response::Get { revision: rev, kvs }),
        );
    }

    fn finish(mut self, at: Time, revision: i64, kvs: Vec<Kv>) -> History {
        self.h.final_state = Some(FinalState {
            revision,
            kvs: kvs.clone(),
            at: at * MS,
            members: vec![(0, revision, kvs)],
        });
        self.h
    }
}

/// a=1 @2, b=1 @3, a=2 @4, reads in between.
fn good() -> Builder {
    let mut b = Builder::new();
    b.put(0, 10, "p/a", "a1", 2, None);
    b.put(5, 15, "p/b", "b1", 3, None);
    b.get(12, 20, "p/a", 3, vec![kv("p/a", "a1", 2, 2, 1)]);
    b.put(21, 30, "p/a", "a2", 4, Some(kv("p/a", "a1", 2, 2, 1)));
    b.get(25, 26, "p/b", 3, vec![kv("p/b", "b1", 3, 3, 1)]);
    b
}

fn good_final() -> Vec<Kv> {
    vec![kv("p/a", "a2", 2, 4, 2), kv("p/b", "b1", 3, 3, 1)]
}

#[test]
fn a_linearizable_history_passes() {
    let verdict = check(&good().finish(100, 4, good_final()));
    assert!(verdict.ok(), "{:?}", verdict.violations);
}

#[test]
fn a_stale_read_on_another_key_is_caught_through_revisions() {
    // b=1 was acknowledged at 15 ms; a read of b invoked after that sees
    // revision 2 (before b existed). Per key it looks like an old read
    // of b; the global check names the revision order.
    let mut b = good();
    b.get(40, 41, "p/b", 2, vec![]);
    let verdict = check(&b.finish(100, 4, good_final()));
    assert!(!verdict.ok());
    assert!(
        verdict.violations.iter().any(|v| v.kind == Kind::Revision),
        "{:?}",
        verdict.violations
    );
    assert!(
        verdict
            .violations
            .iter()
            .any(|v| v.kind == Kind::Linearizability),
        "{:?}",
        verdict.violations
    );
}

#[test]
fn a_write_acknowledged_then_lost_is_counted() {
    // c=1 acknowledged at revision 5, then the cluster restarted from
    // revision 4 and gave revision 5 to d=1.
    let mut b = good();
    b.put(40, 45, "p/c", "c1", 5, None);
    b.put(60, 65, "p/d", "d1", 5, None);
    let mut fin = good_final();
    fin.push(kv("p/d", "d1", 5, 5, 1));
    let verdict = check(&b.finish(100, 5, fin));
    assert_eq!(verdict.lost_acked_writes, 1, "{:?}", verdict.violations);
    assert!(verdict.violations.iter().any(|v| v.kind == Kind::LostWrite));
}

#[test]
fn unknown_writes_are_resolved_from_the_final_state() {
    let mut b = good();
    // Timed out, but the final state shows it at revision 5.
    b.op(
        40,
        None,
        Request::Put {
            key: "p/c".into(),
            value: "c1".into(),
            lease: 0,
        },
        Outcome::Unknown("timeout".into()),
    );
    // Timed out and never seen: it did not happen.
    b.op(
        41,
        None,
        Request::Put {
            key: "p/c".into(),
            value: "c2".into(),
            lease: 0,
        },
        Outcome::Unknown("timeout".into()),
    );
    let mut fin = good_final();
    fin.push(kv("p/c", "c1", 5, 5, 1));
    let verdict = check(&b.finish(100, 5, fin));
    assert!(verdict.ok(), "{:?}", verdict.violations);

    // A revision nobody explains is reported.
    let verdict = check(&good().finish(100, 5, good_final()));
    assert!(
        verdict
            .violations
            .iter()
            .any(|v| v.message.contains("revision 5")),
        "{:?}",
        verdict.violations
    );
}

#[test]
fn a_cas_that_wins_against_a_changed_key_is_caught() {
    let mut b = good();
    // Guarded on a@2, but a was at 4 by then.
    b.op(
        40,
        Some(45),
        Request::CasPut {
            key: "p/a".into(),
            expect_mod_revision: 2,
            expect_value: Some("a1".into()),
            value: "a3".into(),
        },
        Outcome::Ok(Response::Cas {
            revision: 5,
            succeeded: true,
            kv: Some(kv("p/a", "a2", 2, 4, 2)),
        }),
    );
    let fin = vec![kv("p/a", "a3", 2, 5, 3), kv("p/b", "b1", 3, 3, 1)];
    let verdict = check(&b.finish(100, 5, fin));
    assert!(!verdict.ok());
    assert!(
        verdict
            .violations
            .iter()
            .any(|v| v.message.contains("guarded on mod_revision 2")),
        "{:?}",
        verdict.violations
    );
}

fn watch(start: i64, events: Vec<Vec<Event>>) -> Watch {
    Watch {
        id: 0,
        client: 0,
        prefix: "p/".into(),
        start_revision: start,
        segments: vec![WatchSegment {
            member: 0,
            start_revision: start,
            responses: events
                .into_iter()
                .map(|events| WatchResponse {
                    received: 0,
                    header_revision: 0,
                    events,
                    compact_revision: 0,
                    canceled: false,
                })
                .collect(),
            broken: None,
        }],
    }
}

fn put_event(kv: Kv) -> Event {
    Event {
        kind: EventType::Put,
        kv,
    }
}

#[test]
fn watches_must_match_the_kv_history() {
    let e2 = put_event(kv("p/a", "a1", 2, 2, 1));
    let e3 = put_event(kv("p/b", "b1", 3, 3, 1));
    let e4 = put_event(kv("p/a", "a2", 2, 4, 2));
    let run = |w: Watch| {
        let mut h = good().finish(100, 4, good_final());
        h.watches.push(w);
        check(&h)
    };
    let ok = run(watch(
        2,
        vec![vec![e2.clone()], vec![e3.clone(), e4.clone()]],
    ));
    assert!(ok.ok(), "{:?}", ok.violations);
    // From a later start, nothing earlier.
    let ok = run(watch(3, vec![vec![e3.clone()], vec![e4.clone()]]));
    assert!(ok.ok(), "{:?}", ok.violations);

    for (what, w) in [
        ("gap", watch(2, vec![vec![e2.clone()], vec![e4.clone()]])),
        (
            "duplicate",
            watch(
                2,
                vec![vec![e2.clone(), e3.clone()], vec![e3.clone(), e4.clone()]],
            ),
        ),
        (
            "reorder",
            watch(2, vec![vec![e3.clone()], vec![e2.clone(), e4.clone()]]),
        ),
        (
            "before start",
            watch(3, vec![vec![e2.clone(), e3.clone(), e4.clone()]]),
        ),
        (
            "wrong value",
            watch(
                2,
                vec![vec![
                    e2.clone(),
                    put_event(kv("p/b", "zz", 3, 3, 1)),
                    e4.clone(),
                ]],
            ),
        ),
    ] {
        let verdict = run(w);
        assert!(
            verdict.violations.iter().any(|v| v.kind == Kind::Watch),
            "{what}: {:?}",
            verdict.violations
        );
    }
}

/// `watch(start, events)` whose stream ends with a compaction cancel.
fn compacted(mut w: Watch, compact_revision: i64) -> Watch {
    let segment = w.segments.last_mut().expect("one segment");
    segment.responses.push(WatchResponse {
        received: 0,
        header_revision: 0,
        events: Vec::new(),
        compact_revision,
        canceled: true,
    });
    segment.broken = Some("canceled: compacted".into());
    w
}

#[test]
fn a_compaction_cancel_must_be_earned() {
    let e2 = put_event(kv("p/a", "a1", 2, 2, 1));
    let run = |w: Watch| {
        let mut h = good().finish(100, 4, good_final());
        h.watches.push(w);
        check(&h)
    };
    // Started at 2, compacted up to 3: 2 is gone, the cancel is right.
    let ok = run(compacted(watch(2, vec![]), 3));
    assert!(ok.ok(), "{:?}", ok.violations);
    // Revision 2 arrived, so it waited for 3: compacting 3 cancels it.
    let ok = run(compacted(watch(2, vec![vec![e2.clone()]]), 4));
    assert!(ok.ok(), "{:?}", ok.violations);

    for (what, w) in [
        // Waiting for 3 while only 3 was compacted: 3 is still there.
        (
            "not compacted",
            compacted(watch(2, vec![vec![e2.clone()]]), 3),
        ),
        ("future compaction", compacted(watch(2, vec![]), 9)),
        ("resumed after", {
            let mut w = compacted(watch(2, vec![]), 3);
            w.segments.push(WatchSegment {
                member: 1,
                start_revision: 2,
                responses: Vec::new(),
                broken: None,
            });
            w
        }),
    ] {
        let verdict = run(w);
        assert!(
            verdict.violations.iter().any(|v| v.kind == Kind::Watch),
            "{what}: {:?}",
            verdict.violations
        );
    }
}
