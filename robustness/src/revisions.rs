//! The global check: every revision of the run is explained by exactly one
//! write, the writes replay through the model in revision order, every
//! answer agrees with the replay, and the revision order agrees with real
//! time.
//!
//! Revisions are global (one counter for all keys), so this is where
//! cross-key order is checked. The model gives every modifying request the
//! next revision, so a linearization *must* order acknowledged writes by the
//! revision they were told, and a read told revision R must sit where the
//! store's revision is R. Given that order, linearizability reduces to
//! finding effect times p(r) for the writes, increasing in r, with
//!   invoke(write r) <= p(r) <= return(write r),
//!   p(R) <= return(read at R)      (the read saw R's write),
//!   p(R+1) >= invoke(read at R)    (the read did not see R+1's write),
//! which a single pass in revision order decides (earliest feasible p).
//!
//! Unknown writes are placed from evidence: a unique value seen anywhere
//! (reads, `prev_kv`, watch events, the final state) with a mod_revision
//! fixes its write at that revision. Revisions still unexplained must be
//! deletes seen by a watch, filled by an unknown delete of that key; any
//! other gap is a violation. Unknown writes never seen did not happen (or
//! happened after the final read, which is as good).

use std::collections::{BTreeMap, HashMap};

use crate::history::{EventType, History, Kv, Op, Outcome, Request, Response, Time};
use crate::model::Replay;
use crate::violation::{Kind, Violation};

/// The outcome of the global check.
pub struct Checked {
    pub replay: Replay,
    pub violations: Vec<Violation>,
    /// Acknowledged writes that are not part of the final history.
    pub lost_acked_writes: usize,
}

fn same_kv(a: &Kv, b: &Kv) -> bool {
    a.key == b.key
        && a.value == b.value
        && a.mod_revision == b.mod_revision
        && a.create_revision == b.create_revision
        && a.version == b.version
}

fn same_kvs(a: &[Kv], b: &[Kv]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_kv(x, y))
}

fn show(kv: Option<&Kv>) -> String {
    kv.map_or("absent".into(), |kv| {
        format!("{}={:?}@{}", kv.key, kv.value, kv.mod_revision)
    })
}

pub fn check(history: &History) -> Checked {
    let mut violations = Vec::new();
    let mut lost = 0;
    let start = history.start_revision;
    let Some(fin) = &history.final_state else {
        violations.push(Violation::new(
            Kind::FinalState,
            "no final state recorded",
            vec![],
        ));
        return Checked {
            replay: Replay::new(start),
            violations,
            lost_acked_writes: 0,
        };
    };
    let last = fin.revision;
    let ops = &history.ops;

    // 1. Acknowledged writes claim the revision they were told.
    let mut slots: BTreeMap<i64, usize> = BTreeMap::new();
    for op in ops {
        let Some(resp) = op.response() else { continue };
        if !resp.wrote() {
            continue;
        }
        let r = resp.revision();
        if r <= start || r > last {
            lost += 1;
            violations.push(Violation::new(
                Kind::LostWrite,
                format!(
                    "write acknowledged at revision {r}, outside the run's history \
                     ({start}, {last}]: lost"
                ),
                vec![op.id],
            ));
        } else if let Some(&other) = slots.get(&r) {
            lost += 1;
            violations.push(Violation::new(
                Kind::LostWrite,
                format!("revision {r} was acknowledged to two writes: one of them is lost"),
                vec![other, op.id],
            ));
        } else {
            slots.insert(r, op.id);
        }
    }

    // 2. Evidence: every (value, mod_revision) anybody saw.
    let writer: HashMap<&str, usize> = ops
        .iter()
        .filter_map(|op| op.request.written_value().map(|v| (v, op.id)))
        .collect();
    let mut seen: Vec<(&Kv, Option<usize>, Option<usize>)> = Vec::new();
    for op in ops {
        if let Some(resp) = op.response() {
            seen.extend(resp.kvs().into_iter().map(|kv| (kv, Some(op.id), None)));
        }
    }
    seen.extend(fin.kvs.iter().map(|kv| (kv, None, None)));
    for (_, _, kvs) in &fin.members {
        seen.extend(kvs.iter().map(|kv| (kv, None, None)));
    }
    for w in &history.watches {
        for (_, _, e) in w.events() {
            if e.kind == EventType::Put {
                seen.push((&e.kv, None, Some(w.id)));
            }
        }
    }
    for (kv, by_op, by_watch) in seen {
        if kv.mod_revision > last {
            continue;
        }
        let mut v = |msg: String, mut extra: Vec<usize>| {
            extra.extend(by_op);
            let mut violation = Violation::new(Kind::Revision, msg, extra);
            violation.watches.extend(by_watch);
            violations.push(violation);
        };
        let Some(&w) = writer.get(kv.value.as_str()) else {
            v(
                format!("{} was never written by anyone", show(Some(kv))),
                vec![],
            );
            continue;
        };
        let r = kv.mod_revision;
        match ops[w].outcome {
            Outcome::Ok(ref resp) if resp.wrote() => {
                if resp.revision() != r {
                    v(
                        format!(
                            "{} seen, but its write was acknowledged at revision {}",
                            show(Some(kv)),
                            resp.revision()
                        ),
                        vec![w],
                    );
                }
            }
            Outcome::Ok(_) => v(
                format!("{} seen, but its write reported no effect", show(Some(kv))),
                vec![w],
            ),
            Outcome::Unknown(_) => match slots.get(&r) {
                Some(&o) if o == w => {}
                Some(&o) => v(
                    format!(
                        "{} seen, but revision {r} belongs to another write",
                        show(Some(kv))
                    ),
                    vec![o, w],
                ),
                None => match slots.iter().find(|(_, o)| **o == w) {
                    Some((other, _)) => v(
                        format!("{} seen, but also at revision {other}", show(Some(kv))),
                        vec![w],
                    ),
                    None => {
                        slots.insert(r, w);
                    }
                },
            },
        }
    }

    // 3. Gaps: deletes that a watch saw, filled by unknown deletes.
    let mut deletes_seen: HashMap<i64, String> = HashMap::new();
    for w in &history.watches {
        for (_, _, e) in w.events() {
            if e.kind == EventType::Delete {
                deletes_seen.insert(e.kv.mod_revision, e.kv.key.clone());
            }
        }
    }
    let mut unknown_deletes: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op.request, Request::Delete { .. }) && op.response().is_none())
        .collect();
    unknown_deletes.sort_by_key(|op| op.invoke);
    let mut used = vec![false; unknown_deletes.len()];
    for r in start + 1..=last {
        if slots.contains_key(&r) {
            continue;
        }
        let filled = deletes_seen.get(&r).and_then(|key| {
            let i = (0..unknown_deletes.len())
                .find(|&i| !used[i] && unknown_deletes[i].request.key() == key)?;
            used[i] = true;
            Some(unknown_deletes[i].id)
        });
        match filled {
            Some(id) => {
                slots.insert(r, id);
            }
            None => violations.push(Violation::new(
                Kind::Revision,
                format!("revision {r}: no operation of the run explains it"),
                vec![],
            )),
        }
    }

    // 4. Replay in revision order; each write's answer must match.
    let mut replay = Replay::new(start);
    for r in start + 1..=last {
        let Some(&id) = slots.get(&r) else {
            // Reported above; keep the revision numbering.
            replay.last = r;
            continue;
        };
        let op = &ops[id];
        match replay.apply(&op.request) {
            Err(why) => violations.push(Violation::new(
                Kind::Revision,
                format!("revision {r}: the model refuses it: {why}"),
                vec![id],
            )),
            Ok(prev) => {
                let told = match op.response() {
                    Some(Response::Put { prev, .. }) | Some(Response::Delete { prev, .. }) => {
                        Some(prev.as_ref())
                    }
                    Some(Response::Cas { kv, .. }) => Some(kv.as_ref()),
                    _ => None,
                };
                if let Some(told) = told {
                    let agrees = match (told, prev.as_ref()) {
                        (None, None) => true,
                        (Some(a), Some(b)) => same_kv(a, b),
                        _ => false,
                    };
                    if !agrees {
                        violations.push(Violation::new(
                            Kind::Revision,
                            format!(
                                "revision {r}: prev_kv told {}, the replay had {}",
                                show(told),
                                show(prev.as_ref())
                            ),
                            vec![id],
                        ));
                    }
                }
            }
        }
    }

    // 5. Answers that created no revision must match the replay at theirs.
    //    Linearizable ones also bound the write effect times.
    let mut lower: BTreeMap<i64, (Time, usize)> = BTreeMap::new(); // p(r) >= t
    let mut upper: BTreeMap<i64, (Time, usize)> = BTreeMap::new(); // p(r) <= t
    for op in ops {
        let Some(resp) = op.response() else { continue };
        if resp.wrote() {
            continue;
        }
        let r = resp.revision();
        if r < start || r > last {
            violations.push(Violation::new(
                Kind::Revision,
                format!("answered at revision {r}, outside the run's history ({start}, {last}]"),
                vec![op.id],
            ));
            continue;
        }
        let problem = match (&op.request, resp) {
            (Request::Get { key, prefix, .. }, Response::Get { kvs, .. }) => {
                let want = replay.range_at(key, *prefix, r);
                let mut got = kvs.clone();
                got.sort_by(|a, b| a.key.cmp(&b.key));
                (!same_kvs(&got, &want)).then(|| {
                    format!(
                        "read at revision {r} got [{}], the replay had [{}]",
                        got.iter()
                            .map(|kv| show(Some(kv)))
                            .collect::<Vec<_>>()
                            .join(", "),
                        want.iter()
                            .map(|kv| show(Some(kv)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            }
            (Request::Delete { key }, Response::Delete { .. }) => replay.get_at(key, r).map(|kv| {
                format!(
                    "delete at revision {r} found nothing, the replay had {}",
                    show(Some(kv))
                )
            }),
            (
                Request::CasPut {
                    key,
                    expect_mod_revision,
                    ..
                },
                Response::Cas { kv, .. },
            ) => {
                let held = replay.get_at(key, r);
                let guard = held.map_or(0, |kv| kv.mod_revision) == *expect_mod_revision;
                let agrees = match (kv.as_ref(), held) {
                    (None, None) => true,
                    (Some(a), Some(b)) => same_kv(a, b),
                    _ => false,
                };
                (guard || !agrees).then(|| {
                    format!(
                        "txn failed at revision {r} (guard mod_revision {expect_mod_revision}) \
                         and read {}, the replay had {}",
                        show(kv.as_ref()),
                        show(held)
                    )
                })
            }
            _ => Some("answer of the wrong kind".into()),
        };
        if let Some(problem) = problem {
            violations.push(Violation::new(Kind::Revision, problem, vec![op.id]));
        }
        let linearizable = !matches!(
            op.request,
            Request::Get {
                serializable: true,
                ..
            }
        );
        if linearizable {
            let ret = op.ret_or_max();
            let lo = lower.entry(r + 1).or_insert((0, op.id));
            if op.invoke > lo.0 {
                *lo = (op.invoke, op.id);
            }
            let hi = upper.entry(r).or_insert((Time::MAX, op.id));
            if ret < hi.0 {
                *hi = (ret, op.id);
            }
        }
    }

    // 6. Real time: earliest feasible effect time per revision.
    let mut p: Time = 0;
    let mut p_by: Option<usize> = None;
    for r in start + 1..=last {
        let Some(&id) = slots.get(&r) else { continue };
        let op = &ops[id];
        let mut lo = (op.invoke, id);
        if let Some(&(t, by)) = lower.get(&r)
            && t > lo.0
        {
            lo = (t, by);
        }
        if lo.0 > p {
            p = lo.0;
            p_by = Some(lo.1);
        }
        let mut hi = (op.ret_or_max(), id);
        if let Some(&(t, by)) = upper.get(&r)
            && t < hi.0
        {
            hi = (t, by);
        }
        if p > hi.0 {
            let mut witnesses = vec![id];
            witnesses.extend(p_by.filter(|b| *b != id));
            if hi.1 != id {
                witnesses.push(hi.1);
            }
            violations.push(Violation::new(
                Kind::Revision,
                format!(
                    "real-time order: revision {r} cannot take effect before {p} ns \
                     (op {:?} was invoked then, and saw an earlier revision or writes an \
                     earlier one), yet op {} had already returned at {} ns having seen or \
                     made revision {r}",
                    p_by, hi.1, hi.0
                ),
                witnesses,
            ));
            p = hi.0;
        }
    }

    // 7. The end: the final read and every member agree with the replay.
    let want = replay.range_at(&history.prefix, true, last);
    let mut got = fin.kvs.clone();
    got.sort_by(|a, b| a.key.cmp(&b.key));
    if !same_kvs(&got, &want) {
        violations.push(Violation::new(
            Kind::FinalState,
            format!("final read at revision {last} differs from the replay"),
            vec![],
        ));
    }
    for (member, revision, kvs) in &fin.members {
        let mut kvs = kvs.clone();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        if *revision < last || (*revision == last && !same_kvs(&kvs, &want)) {
            violations.push(Violation::new(
                Kind::FinalState,
                format!(
                    "member {member} at revision {revision} does not hold the replay's \
                     state at {last}"
                ),
                vec![],
            ));
        }
    }
    Checked {
        replay,
        violations,
        lost_acked_writes: lost,
    }
}
