//! Watch guarantees (etcd's api_guarantees), checked against the replay:
//! - ordered: revisions never go back within a logical watch;
//! - unique: no (revision, key) is delivered twice;
//! - atomic: all events of one revision arrive in one response;
//! - reliable: between the start revision and the last revision received
//!   (capped at the final revision) the events are exactly the replay's,
//!   so nothing is missing and nothing is made up ("events agree with the
//!   KV history": same key, value, create/mod revision and version);
//! - resumable: a stream resumed from the last revision received + 1 (on
//!   any member) continues without a gap or a repeat;
//! - nothing before the start revision is delivered (also when the start is
//!   in the future);
//! - a watch ends canceled for compaction only when the revision it would
//!   deliver next has been compacted.
//!
//! Watches are not linearizable with other requests, so no real-time check.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Event, EventType, History, Watch, WatchSegment};
use crate::model::Replay;
use crate::violation::{Kind, Violation};

fn same_event(a: &Event, b: &Event) -> bool {
    if a.kind != b.kind || a.kv.key != b.kv.key || a.kv.mod_revision != b.kv.mod_revision {
        return false;
    }
    a.kind == EventType::Delete
        || (a.kv.value == b.kv.value
            && a.kv.create_revision == b.kv.create_revision
            && a.kv.version == b.kv.version)
}

fn show(e: &Event) -> String {
    format!(
        "{:?} {}={:?}@{}",
        e.kind, e.kv.key, e.kv.value, e.kv.mod_revision
    )
}

fn violation(w: &Watch, message: String) -> Violation {
    let mut v = Violation::new(Kind::Watch, format!("watch {}: {message}", w.id), vec![]);
    v.watches.push(w.id);
    v
}

fn check_one(w: &Watch, replay: &Replay, out: &mut Vec<Violation>) {
    let events = w.events();
    let mut last_rev = 0;
    let mut delivered: HashSet<(i64, &str)> = HashSet::new();
    let mut response_of: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
    for &(segment, response, e) in &events {
        let r = e.kv.mod_revision;
        if r < w.start_revision || r < w.segments[segment].start_revision {
            out.push(violation(
                w,
                format!(
                    "{} delivered, before the (re)start revision {}",
                    show(e),
                    w.segments[segment].start_revision
                ),
            ));
        }
        if r < last_rev {
            out.push(violation(
                w,
                format!("out of order: {} after revision {last_rev}", show(e)),
            ));
        }
        last_rev = last_rev.max(r);
        if !delivered.insert((r, e.kv.key.as_str())) {
            out.push(violation(w, format!("delivered twice: {}", show(e))));
        }
        match response_of.get(&r) {
            Some(&at) if at != (segment, response) => {
                out.push(violation(w, format!("revision {r} split across responses")))
            }
            _ => {
                response_of.insert(r, (segment, response));
            }
        }
    }
    // Resumption points: each next segment starts right after what arrived.
    let mut upto = w.start_revision - 1;
    for (i, segment) in w.segments.iter().enumerate() {
        check_compaction_cancel(w, segment, upto, replay, out);
        if i > 0 && segment.start_revision != upto + 1 {
            out.push(violation(
                w,
                format!(
                    "segment {i} resumed at {} instead of {}",
                    segment.start_revision,
                    upto + 1
                ),
            ));
        }
        for resp in &segment.responses {
            for e in &resp.events {
                upto = upto.max(e.kv.mod_revision);
            }
        }
    }
    // Reliable, and agreeing with the KV history.
    let until = last_rev.min(replay.last);
    if until < w.start_revision {
        return;
    }
    let want: Vec<&Event> = replay
        .events
        .range(w.start_revision.max(replay.start + 1)..=until)
        .flat_map(|(_, es)| es.iter())
        .filter(|e| e.kv.key.starts_with(&w.prefix))
        .collect();
    let got: Vec<&Event> = events
        .iter()
        .map(|(_, _, e)| *e)
        .filter(|e| e.kv.mod_revision <= until)
        .collect();
    if want.len() != got.len() || !want.iter().zip(&got).all(|(a, b)| same_event(a, b)) {
        let first = want
            .iter()
            .zip(&got)
            .position(|(a, b)| !same_event(a, b))
            .unwrap_or(want.len().min(got.len()));
        out.push(violation(
            w,
            format!(
                "events from {} through {until} differ from the KV history at event #{first}: \
                 expected {}, got {} ({} expected, {} received)",
                w.start_revision,
                want.get(first).map_or("nothing".into(), |e| show(e)),
                got.get(first).map_or("nothing".into(), |e| show(e)),
                want.len(),
                got.len()
            ),
        ));
    }
}

/// A watch may be canceled for compaction (etcd's `compact_revision`) only
/// when the next revision it would deliver, `upto + 1`, is below the
/// compacted revision, with no events in that response, and only as the
/// last response of the watch (the watch is over).
fn check_compaction_cancel(
    w: &Watch,
    segment: &WatchSegment,
    upto: i64,
    replay: &Replay,
    out: &mut Vec<Violation>,
) {
    let Some((n, resp)) = segment
        .responses
        .iter()
        .enumerate()
        .find(|(_, r)| r.compact_revision > 0)
    else {
        return;
    };
    let next = segment
        .responses
        .iter()
        .take(n)
        .flat_map(|r| &r.events)
        .map(|e| e.kv.mod_revision + 1)
        .fold(upto.max(segment.start_revision - 1) + 1, i64::max);
    let is_last = std::ptr::eq(segment, w.segments.last().expect("segment of w"))
        && n + 1 == segment.responses.len();
    if !resp.canceled
        || !resp.events.is_empty()
        || next >= resp.compact_revision
        || resp.compact_revision > replay.last
        || !is_last
    {
        out.push(violation(
            w,
            format!(
                "compaction cancel at compact_revision {} (canceled: {}, {} events) while \
                 the watch was at revision {next} of {} (last response of the watch: {is_last})",
                resp.compact_revision,
                resp.canceled,
                resp.events.len(),
                replay.last
            ),
        ));
    }
}

/// Checks every watch of the run against the replay.
pub fn check(history: &History, replay: &Replay) -> Vec<Violation> {
    let mut out = Vec::new();
    for w in &history.watches {
        check_one(w, replay, &mut out);
    }
    out
}
