//! Per-key linearizability: a porcupine-style search (Wing & Gong with
//! Lowe's memoisation) over one key at a time, against a register with
//! compare-and-set.
//!
//! Why per key is sound: every request of the traffic touches one key (a
//! prefix read is projected onto each key it covers, at the same interval),
//! and linearizability is compositional (Herlihy & Wing): a history is
//! linearizable only if each key's sub-history is. So a failure here is a
//! real violation. What this search cannot see is cross-key order through
//! the global revision; `revisions.rs` checks that.
//!
//! The register holds the unique value last written (or nothing), a CAS
//! guard on mod_revision `m` is the guard "the value is the one the client
//! saw at `m`" (values are unique, so the two agree), and an unknown write
//! may take effect at any time after its invoke, or never. The final
//! linearizable read of every key pins unknown writes down ("resolved from
//! the final state").
//!
//! Revisions only prune the search: a write known to have taken effect at
//! revision `r` (its answer says so, or a read or watch event showed its
//! value with mod_revision `r`) is linearized only after the key's write at
//! the next lower known revision. In a correct etcd the order of writes is
//! the order of their revisions, so this excludes no true linearization;
//! it only adds constraints, so it cannot make an illegal history pass.
//! Without it, a partition that releases a dozen queued writes at once
//! leaves the search every order of them to try.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use crate::history::{History, Outcome, Request, Response, Time};

/// Op id of the final read in a key's sub-history.
pub const FINAL_READ: usize = usize::MAX;

/// Search steps per key before giving up with [`SearchResult::Unknown`].
pub const STEP_BUDGET: u64 = 20_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchResult {
    Linearizable,
    Illegal,
    /// The step budget ran out: neither proven nor refuted.
    Unknown,
}

/// Register state: the interned value held, or `None` when absent.
type State = Option<u32>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Put(u32),
    Delete,
    Read,
    Cas { expect: State, new: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// A put's or delete's previous value.
    Prev(State),
    Read(State),
    CasOk {
        prev: State,
    },
    CasFailed {
        current: State,
    },
}

/// One operation of one key's sub-history.
#[derive(Clone, Copy, Debug)]
struct KeyOp {
    /// History op id, or [`FINAL_READ`].
    id: usize,
    call: Time,
    ret: Time,
    input: Input,
    /// `None`: outcome unknown, any output is fine.
    output: Option<Output>,
    /// The revision this op wrote the key at, when known to have written.
    rev: Option<i64>,
}

/// The model: `Some(next state)` when `input` with `output` is legal in
/// `state`.
fn step(state: State, input: Input, output: Option<Output>) -> Option<State> {
    match (input, output) {
        (Input::Put(v), None) => Some(Some(v)),
        (Input::Put(v), Some(Output::Prev(p))) => (p == state).then_some(Some(v)),
        (Input::Delete, None) => Some(None),
        (Input::Delete, Some(Output::Prev(p))) => (p == state).then_some(None),
        (Input::Read, Some(Output::Read(seen))) => (seen == state).then_some(state),
        (Input::Cas { expect, new }, None) => Some(if state == expect { Some(new) } else { state }),
        (Input::Cas { expect, new }, Some(Output::CasOk { prev })) => {
            (state == expect && prev == state).then_some(Some(new))
        }
        (Input::Cas { expect, .. }, Some(Output::CasFailed { current })) => {
            (state != expect && current == state).then_some(state)
        }
        _ => None,
    }
}

/// Wing & Gong's search with memoisation of (linearized set, state): is
/// there an order of `ops`, each placed between its call and return, that
/// the model accepts? Ties count as overlapping (calls sort before returns).
fn search(ops: &[KeyOp], budget: u64) -> SearchResult {
    let n = ops.len();
    if n == 0 {
        return SearchResult::Linearizable;
    }
    // Entries: 2i is op i's call, 2i+1 its return.
    let mut order: Vec<usize> = (0..2 * n).collect();
    let time = |e: usize| {
        if e.is_multiple_of(2) {
            ops[e / 2].call
        } else {
            ops[e / 2].ret
        }
    };
    order.sort_by_key(|&e| (time(e), e % 2));
    // Doubly linked list over entries; `head` is a sentinel.
    let head = 2 * n;
    const NIL: usize = usize::MAX;
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut last = head;
    for &e in &order {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    let unlink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, nx) = (prev[e], next[e]);
        next[p] = nx;
        if nx != NIL {
            prev[nx] = p;
        }
    };
    let relink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, nx) = (prev[e], next[e]);
        next[p] = e;
        if nx != NIL {
            prev[nx] = e;
        }
    };
    // Deletes of unknown outcome that never returned are interchangeable
    // (same effect, no output, open-ended): any order of them can be
    // swapped into call order, so only that order is explored. Without it,
    // k such deletes multiply the search by the 2^k subsets of them.
    let mut after: Vec<Option<usize>> = vec![None; n];
    let mut open_deletes: Vec<usize> = (0..n)
        .filter(|&i| {
            ops[i].input == Input::Delete && ops[i].output.is_none() && ops[i].ret == Time::MAX
        })
        .collect();
    open_deletes.sort_by_key(|&i| (ops[i].call, i));
    for pair in open_deletes.windows(2) {
        after[pair[1]] = Some(pair[0]);
    }
    // Writes of known revision go in revision order (see the module doc).
    // An open delete has no known revision, so the two chains never share
    // an op.
    let mut revised: Vec<usize> = (0..n).filter(|&i| ops[i].rev.is_some()).collect();
    revised.sort_by_key(|&i| (ops[i].rev, i));
    for pair in revised.windows(2) {
        after[pair[1]] = Some(pair[0]);
    }
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut entry = next[head];
    let mut steps = 0u64;
    while next[head] != NIL {
        steps += 1;
        if steps > budget {
            return SearchResult::Unknown;
        }
        if entry.is_multiple_of(2) {
            let i = entry / 2;
            let in_turn = after[i].is_none_or(|j| linearized[j / 64] & (1 << (j % 64)) != 0);
            if let Some(new_state) = step(state, ops[i].input, ops[i].output).filter(|_| in_turn) {
                let mut candidate = linearized.clone();
                candidate[i / 64] |= 1 << (i % 64);
                if cache.insert((candidate.clone(), new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    linearized = candidate;
                    // Lift the call and its return out of the list.
                    unlink(entry, &mut next, &mut prev);
                    unlink(entry + 1, &mut next, &mut prev);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return whose call is still in the list: that op had to be
            // linearized by now. Undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return SearchResult::Illegal;
            };
            state = before;
            let i = call / 2;
            linearized[i / 64] &= !(1 << (i % 64));
            relink(call + 1, &mut next, &mut prev);
            relink(call, &mut next, &mut prev);
            entry = next[call];
        }
    }
    SearchResult::Linearizable
}

/// One key's verdict when it is not linearizable (or undecided).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFailure {
    pub key: String,
    pub result: SearchResult,
    /// A 1-minimal failing sub-history (history op ids; [`FINAL_READ`] is
    /// the final read): dropping any one op makes it linearizable, or the
    /// shrink ran out of time.
    pub minimal: Vec<usize>,
}

struct Interner(HashMap<String, u32>);

impl Interner {
    fn id(&mut self, value: &str) -> u32 {
        let next = self.0.len() as u32;
        *self.0.entry(value.to_owned()).or_insert(next)
    }
}

/// What the run showed of one written value.
#[derive(Clone, Copy, Debug)]
struct Observed {
    /// The earliest time anybody had seen it (a return of an op that showed
    /// it, a watch response that carried it), `Time::MAX` when only the
    /// final state shows it.
    at: Time,
    /// The mod_revision it was shown with (the lowest, should a broken
    /// server show several: the revision checker reports that).
    mod_revision: i64,
}

/// Every written value anybody saw, and when and at which revision.
fn observations<'h>(history: &'h History) -> HashMap<&'h str, Observed> {
    let mut seen: HashMap<&'h str, Observed> = HashMap::new();
    let mut saw = |kv: &'h crate::history::Kv, at: Time| {
        let o = seen.entry(&kv.value).or_insert(Observed {
            at,
            mod_revision: kv.mod_revision,
        });
        o.at = o.at.min(at);
        o.mod_revision = o.mod_revision.min(kv.mod_revision);
    };
    for op in &history.ops {
        if let (Some(resp), Some(ret)) = (op.response(), op.ret) {
            for kv in resp.kvs() {
                saw(kv, ret);
            }
        }
    }
    for w in &history.watches {
        for segment in &w.segments {
            for resp in &segment.responses {
                for e in &resp.events {
                    saw(&e.kv, resp.received);
                }
            }
        }
    }
    if let Some(f) = &history.final_state {
        for kv in f
            .kvs
            .iter()
            .chain(f.members.iter().flat_map(|m| m.2.iter()))
        {
            saw(kv, Time::MAX);
        }
    }
    seen
}

/// Every key's sub-history, in op order. Unknown writes are patched as
/// etcd's checker does: one never seen is left out, one seen returns by the
/// time it was first seen.
fn partition(history: &History) -> Vec<(String, Vec<KeyOp>)> {
    let mut values = Interner(HashMap::new());
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for op in &history.ops {
        if !matches!(op.request, Request::Get { prefix: true, .. }) {
            keys.insert(op.request.key().to_owned());
        }
        if let Some(r) = op.response() {
            keys.extend(r.kvs().iter().map(|kv| kv.key.clone()));
        }
    }
    if let Some(f) = &history.final_state {
        keys.extend(f.kvs.iter().map(|kv| kv.key.clone()));
    }
    let observed = observations(history);
    let mut by_key: HashMap<String, Vec<KeyOp>> = HashMap::new();
    for op in &history.ops {
        let mut v = |s: &Option<String>| s.as_deref().map(|s| values.id(s));
        let mut ret = op.ret_or_max();
        // The revision it wrote at: its own answer's, when that says it wrote.
        let mut rev = op.response().filter(|r| r.wrote()).map(|r| r.revision());
        if op.response().is_none()
            && let Some(value) = op.request.written_value()
        {
            match observed.get(value) {
                // Never seen by anyone: placing it after everything else
                // (its return is unknown) is always legal and nothing could
                // need it earlier, since any op depending on its effect
                // would show its unique value.
                None => continue,
                // It had taken effect before anyone who saw it returned,
                // at the revision it was seen with.
                Some(seen) => {
                    ret = ret.min(seen.at);
                    rev = Some(seen.mod_revision);
                }
            }
        }
        let mut add = |key: &str, input: Input, output: Option<Output>| {
            by_key.entry(key.to_owned()).or_default().push(KeyOp {
                id: op.id,
                call: op.invoke,
                ret,
                input,
                output,
                rev,
            });
        };
        let kv_value = |kv: &Option<crate::history::Kv>, values: &mut Interner| {
            kv.as_ref().map(|kv| values.id(&kv.value))
        };
        match (&op.request, &op.outcome) {
            (
                Request::Get {
                    serializable: true, ..
                },
                _,
            ) => {}
            (Request::Get { .. }, Outcome::Unknown(_)) => {}
            (Request::Get { key, prefix, .. }, Outcome::Ok(Response::Get { kvs, .. })) => {
                let covered: Vec<&String> = if *prefix {
                    keys.iter()
                        .filter(|k| k.starts_with(key.as_str()))
                        .collect()
                } else {
                    vec![key]
                };
                for k in covered {
                    let seen = kvs
                        .iter()
                        .find(|kv| &kv.key == k)
                        .map(|kv| values.id(&kv.value));
                    add(k, Input::Read, Some(Output::Read(seen)));
                }
            }
            (Request::Put { key, value, .. }, outcome) => {
                let input = Input::Put(values.id(value));
                let output = match outcome {
                    Outcome::Ok(Response::Put { prev, .. }) => {
                        Some(Output::Prev(kv_value(prev, &mut values)))
                    }
                    _ => None,
                };
                add(key, input, output);
            }
            (Request::Delete { key }, outcome) => {
                let output = match outcome {
                    Outcome::Ok(Response::Delete { prev, .. }) => {
                        Some(Output::Prev(kv_value(prev, &mut values)))
                    }
                    _ => None,
                };
                add(key, Input::Delete, output);
            }
            (
                Request::CasPut {
                    key,
                    expect_value,
                    value,
                    ..
                },
                outcome,
            ) => {
                let input = Input::Cas {
                    expect: v(expect_value),
                    new: values.id(value),
                };
                let output = match outcome {
                    Outcome::Ok(Response::Cas {
                        succeeded: true,
                        kv,
                        ..
                    }) => Some(Output::CasOk {
                        prev: kv_value(kv, &mut values),
                    }),
                    Outcome::Ok(Response::Cas { kv, .. }) => Some(Output::CasFailed {
                        current: kv_value(kv, &mut values),
                    }),
                    _ => None,
                };
                add(key, input, output);
            }
            // A response of the wrong kind: the revision checker reports it.
            _ => {}
        }
    }
    if let Some(f) = &history.final_state {
        for k in &keys {
            let seen = f
                .kvs
                .iter()
                .find(|kv| &kv.key == k)
                .map(|kv| values.id(&kv.value));
            by_key.entry(k.clone()).or_default().push(KeyOp {
                id: FINAL_READ,
                call: f.at,
                ret: f.at.saturating_add(1),
                input: Input::Read,
                output: Some(Output::Read(seen)),
                rev: None,
            });
        }
    }
    let mut out: Vec<(String, Vec<KeyOp>)> = by_key.into_iter().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The value an op writes, if any.
fn writes(op: &KeyOp) -> Option<u32> {
    match op.input {
        Input::Put(v) | Input::Cas { new: v, .. } => Some(v),
        _ => None,
    }
}

/// Every value an op's answer shows.
fn shows(op: &KeyOp) -> Option<u32> {
    match op.output? {
        Output::Prev(s)
        | Output::Read(s)
        | Output::CasOk { prev: s }
        | Output::CasFailed { current: s } => s,
    }
}

/// Drops ops one at a time while the rest stays illegal, until `deadline`.
/// A write stays while an op left shows its value, so the result explains
/// itself (no read of a value nobody wrote).
fn shrink(mut ops: Vec<KeyOp>, deadline: Instant) -> Vec<KeyOp> {
    let mut i = 0;
    while i < ops.len() && Instant::now() < deadline {
        if let Some(v) = writes(&ops[i])
            && ops.iter().any(|op| shows(op) == Some(v))
        {
            i += 1;
            continue;
        }
        let mut without = ops.clone();
        without.remove(i);
        if search(&without, STEP_BUDGET / 10) == SearchResult::Illegal {
            ops = without;
        } else {
            i += 1;
        }
    }
    ops
}

/// Checks every key; returns the keys that are not linearizable or could
/// not be decided, each with a minimal failing sub-history.
pub fn check(history: &History, shrink_for: std::time::Duration) -> Vec<KeyFailure> {
    let mut failures = Vec::new();
    for (key, ops) in partition(history) {
        let result = search(&ops, STEP_BUDGET);
        if result == SearchResult::Linearizable {
            continue;
        }
        let minimal = if result == SearchResult::Illegal {
            shrink(ops, Instant::now() + shrink_for)
        } else {
            ops
        };
        failures.push(KeyFailure {
            key,
            result,
            minimal: minimal.iter().map(|op| op.id).collect(),
        });
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Time, ret: Time, input: Input, output: Option<Output>) -> KeyOp {
        KeyOp {
            id: 0,
            call,
            ret,
            input,
            output,
            rev: None,
        }
    }

    #[test]
    fn sequential_register_is_linearizable() {
        let ops = [
            op(0, 1, Input::Put(1), Some(Output::Prev(None))),
            op(2, 3, Input::Read, Some(Output::Read(Some(1)))),
            op(4, 5, Input::Delete, Some(Output::Prev(Some(1)))),
            op(6, 7, Input::Read, Some(Output::Read(None))),
        ];
        assert_eq!(search(&ops, STEP_BUDGET), SearchResult::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_illegal() {
        let ops = [
            op(0, 1, Input::Put(1), Some(Output::Prev(None))),
            op(2, 3, Input::Put(2), Some(Output::Prev(Some(1)))),
            op(4, 5, Input::Read, Some(Output::Read(Some(1)))),
        ];
        assert_eq!(search(&ops, STEP_BUDGET), SearchResult::Illegal);
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        let ops = [
            op(0, 1, Input::Put(1), Some(Output::Prev(None))),
            op(2, 10, Input::Put(2), Some(Output::Prev(Some(1)))),
            op(3, 4, Input::Read, Some(Output::Read(Some(2)))),
            op(5, 6, Input::Read, Some(Output::Read(Some(2)))),
        ];
        assert_eq!(search(&ops, STEP_BUDGET), SearchResult::Linearizable);
        // ...but not go back once one saw the new value.
        let back = [
            op(0, 1, Input::Put(1), Some(Output::Prev(None))),
            op(2, 10, Input::Put(2), Some(Output::Prev(Some(1)))),
            op(3, 4, Input::Read, Some(Output::Read(Some(2)))),
            op(5, 6, Input::Read, Some(Output::Read(Some(1)))),
        ];
        assert_eq!(search(&back, STEP_BUDGET), SearchResult::Illegal);
    }

    #[test]
    fn unknown_write_may_apply_late_or_never() {
        let late = [
            op(0, Time::MAX, Input::Put(1), None),
            op(5, 6, Input::Read, Some(Output::Read(None))),
            op(7, 8, Input::Read, Some(Output::Read(Some(1)))),
        ];
        assert_eq!(search(&late, STEP_BUDGET), SearchResult::Linearizable);
        let never = [
            op(0, Time::MAX, Input::Put(1), None),
            op(5, 6, Input::Read, Some(Output::Read(None))),
        ];
        assert_eq!(search(&never, STEP_BUDGET), SearchResult::Linearizable);
        // Seen, then unseen again: it cannot un-apply.
        let flicker = [
            op(0, Time::MAX, Input::Put(1), None),
            op(5, 6, Input::Read, Some(Output::Read(Some(1)))),
            op(7, 8, Input::Read, Some(Output::Read(None))),
        ];
        assert_eq!(search(&flicker, STEP_BUDGET), SearchResult::Illegal);
    }

    #[test]
    fn open_ended_unknown_deletes_are_explored_in_call_order_only() {
        // k deletes that never returned, all called at the start, then puts
        // that each find the key absent: every put after the first needs
        // one of the deletes before it. With k + 1 puts the history is
        // legal; with k + 2 it is not, and proving that means trying the
        // deletes in every arrangement, 2^k subsets of them, unless
        // interchangeable deletes are tried in one order only.
        let k = 24u32;
        let history = |puts: u32| {
            let mut ops: Vec<KeyOp> = (0..k)
                .map(|d| op(Time::from(d), Time::MAX, Input::Delete, None))
                .collect();
            for p in 0..puts {
                let t = 100 + Time::from(p) * 10;
                ops.push(op(t, t + 1, Input::Put(p + 1), Some(Output::Prev(None))));
            }
            ops
        };
        assert_eq!(search(&history(k + 1), 200_000), SearchResult::Linearizable);
        assert_eq!(search(&history(k + 2), 200_000), SearchResult::Illegal);
    }

    /// `k` puts of unknown outcome, all in flight together from time 0 to
    /// 1000 (patched: each was seen by then), put `i` at revision `revs[i]`,
    /// then reads at 100, 102, 104, ... showing `reads` in turn.
    fn released_together(revs: &[i64], reads: &[u32], with_revisions: bool) -> Vec<KeyOp> {
        let mut ops: Vec<KeyOp> = revs
            .iter()
            .enumerate()
            .map(|(i, &rev)| KeyOp {
                rev: with_revisions.then_some(rev),
                ..op(i as Time, 1000, Input::Put(i as u32 + 1), None)
            })
            .collect();
        for (j, &v) in reads.iter().enumerate() {
            let t = 100 + 2 * j as Time;
            ops.push(op(t, t + 1, Input::Read, Some(Output::Read(Some(v)))));
        }
        ops
    }

    #[test]
    fn writes_released_together_are_ordered_by_their_revisions() {
        // What a healed partition does: a couple of dozen queued writes
        // commit at once. A read sees the first, the next the second, a
        // third the first again (impossible: values are unique). Without
        // revisions the search tries every subset of the other writes
        // before each read and runs out of budget; with them it is decided
        // at once.
        let k = 22;
        let revs: Vec<i64> = (1..=k).collect();
        let flicker = [1, 2, 1];
        assert_eq!(
            search(&released_together(&revs, &flicker, false), 2_000_000),
            SearchResult::Unknown
        );
        assert_eq!(
            search(&released_together(&revs, &flicker, true), 2_000_000),
            SearchResult::Illegal
        );
        let in_order = [1, 2, 5, 22];
        assert_eq!(
            search(&released_together(&revs, &in_order, true), 2_000_000),
            SearchResult::Linearizable
        );
        // Revisions are constraints: reads that see the writes against
        // their revision order fail, though the values alone would pass.
        let reversed = [4, 3, 2, 1];
        assert_eq!(
            search(&released_together(&reversed, &[1, 2], false), 2_000_000),
            SearchResult::Linearizable
        );
        assert_eq!(
            search(&released_together(&reversed, &[1, 2], true), 2_000_000),
            SearchResult::Illegal
        );
    }

    #[test]
    fn cas_follows_its_guard() {
        let ok = [
            op(0, 1, Input::Put(1), Some(Output::Prev(None))),
            op(
                2,
                3,
                Input::Cas {
                    expect: Some(1),
                    new: 2,
                },
                Some(Output::CasOk { prev: Some(1) }),
            ),
            op(
                4,
                5,
                Input::Cas {
                    expect: Some(1),
                    new: 3,
                },
                Some(Output::CasFailed { current: Some(2) }),
            ),
        ];
        assert_eq!(search(&ok, STEP_BUDGET), SearchResult::Linearizable);
        // Two CAS from the same guard cannot both win (a lost update).
        let both = [
            op(0, 1, Input::Put(1), Some(Output::Prev(None))),
            op(
                2,
                5,
                Input::Cas {
                    expect: Some(1),
                    new: 2,
                },
                Some(Output::CasOk { prev: Some(1) }),
            ),
            op(
                2,
                5,
                Input::Cas {
                    expect: Some(1),
                    new: 3,
                },
                Some(Output::CasOk { prev: Some(1) }),
            ),
        ];
        assert_eq!(search(&both, STEP_BUDGET), SearchResult::Illegal);
    }

    #[test]
    fn shrink_keeps_only_the_witnesses() {
        let mut ops = vec![op(0, 1, Input::Put(1), Some(Output::Prev(None)))];
        for i in 0..20u64 {
            ops.push(op(2 + i, 3 + i, Input::Read, Some(Output::Read(Some(1)))));
        }
        ops.push(op(30, 31, Input::Put(2), Some(Output::Prev(Some(1)))));
        ops.push(op(32, 33, Input::Read, Some(Output::Read(Some(1)))));
        for (i, o) in ops.iter_mut().enumerate() {
            o.id = i;
        }
        assert_eq!(search(&ops, STEP_BUDGET), SearchResult::Illegal);
        let minimal = shrink(ops, Instant::now() + std::time::Duration::from_secs(5));
        let ids: Vec<usize> = minimal.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![0, 21, 22], "the two writes and the stale read");
    }
}
