//! What the traffic recorded: every KV operation with its invoke and return
//! times and its result, and every watch with the responses it received.
//!
//! Times are nanoseconds since the run started, from one monotonic clock.
//! A write whose result the client never learned (a timeout, a dropped
//! connection, any error) is [`Outcome::Unknown`]: it may or may not have
//! been applied, and may take effect at any time after its invoke.

use serde::{Deserialize, Serialize};

/// Nanoseconds since the run started.
pub type Time = u64;

/// One key-value as etcd returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// `Put` with `prev_kv`; `value` is unique in the whole run.
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    /// `Range` of one key, or of every key under `key` when `prefix`.
    Get {
        key: String,
        prefix: bool,
        serializable: bool,
    },
    /// `DeleteRange` of one key with `prev_kv`.
    Delete { key: String },
    /// `Txn`: if `mod_revision(key) == expect_mod_revision` then put
    /// `key = value` (with `prev_kv`), else get `key`. `expect_value` is the
    /// value the client saw at that mod_revision (`None`: key absent, 0), so
    /// with unique values the guard also reads "the value is `expect_value`".
    CasPut {
        key: String,
        expect_mod_revision: i64,
        expect_value: Option<String>,
        value: String,
    },
}

impl Request {
    /// The one key this request is about (the prefix for a prefix get).
    pub fn key(&self) -> &str {
        match self {
            Request::Put { key, .. }
            | Request::Get { key, .. }
            | Request::Delete { key }
            | Request::CasPut { key, .. } => key,
        }
    }

    /// True when the request may change the store.
    pub fn may_write(&self) -> bool {
        !matches!(self, Request::Get { .. })
    }

    /// The unique value this request writes, if any.
    pub fn written_value(&self) -> Option<&str> {
        match self {
            Request::Put { value, .. } | Request::CasPut { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// What the server answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Header revision (the put's own revision) and `prev_kv`.
    Put { revision: i64, prev: Option<Kv> },
    /// Header revision (the revision the read saw) and the key-values.
    Get { revision: i64, kvs: Vec<Kv> },
    /// Header revision (new only when something was deleted), the count and
    /// the `prev_kvs`.
    Delete {
        revision: i64,
        deleted: i64,
        prev: Option<Kv>,
    },
    /// Header revision; whether the guard held; on success the put's
    /// `prev_kv`, on failure the else branch's get of the key.
    Cas {
        revision: i64,
        succeeded: bool,
        kv: Option<Kv>,
    },
}

impl Response {
    pub fn revision(&self) -> i64 {
        match self {
            Response::Put { revision, .. }
            | Response::Get { revision, .. }
            | Response::Delete { revision, .. }
            | Response::Cas { revision, .. } => *revision,
        }
    }

    /// True when this answer says the request created a new revision.
    pub fn wrote(&self) -> bool {
        match self {
            Response::Put { .. } => true,
            Response::Get { .. } => false,
            Response::Delete { deleted, .. } => *deleted > 0,
            Response::Cas { succeeded, .. } => *succeeded,
        }
    }

    /// Every key-value this answer shows (each with its mod_revision).
    pub fn kvs(&self) -> Vec<&Kv> {
        match self {
            Response::Put { prev, .. } | Response::Delete { prev, .. } => prev.iter().collect(),
            Response::Cas { kv, .. } => kv.iter().collect(),
            Response::Get { kvs, .. } => kvs.iter().collect(),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok(Response),
    /// The client did not learn the result (error or timeout). A read that
    /// ends like this has no effect and is dropped from the history.
    Unknown(String),
}

/// One KV operation of one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Index in [`History::ops`].
    pub id: usize,
    pub client: usize,
    /// Member index the client sent it to.
    pub member: usize,
    pub invoke: Time,
    /// `None` when the outcome is unknown: the op may take effect any time
    /// after `invoke`.
    pub ret: Option<Time>,
    pub request: Request,
    pub outcome: Outcome,
}

impl Op {
    pub fn response(&self) -> Option<&Response> {
        match &self.outcome {
            Outcome::Ok(r) => Some(r),
            Outcome::Unknown(_) => None,
        }
    }

    /// The return time, infinite for an unknown outcome.
    pub fn ret_or_max(&self) -> Time {
        self.ret.unwrap_or(Time::MAX)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Put,
    Delete,
}

/// One watch event (the key-value after a put; after a delete only the key
/// and the delete's mod_revision).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventType,
    pub kv: Kv,
}

/// One response on a watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    pub received: Time,
    pub header_revision: i64,
    pub events: Vec<Event>,
    pub compact_revision: i64,
    pub canceled: bool,
}

/// One stream of a logical watch: where it (re)started and what arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSegment {
    pub member: usize,
    pub start_revision: i64,
    pub responses: Vec<WatchResponse>,
    /// Why the stream ended early (then the next segment resumes it).
    pub broken: Option<String>,
}

/// A logical watch on `prefix` from `start_revision`, resumed after each
/// broken stream from the last revision received + 1 (etcd's resumable
/// guarantee).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub id: usize,
    pub client: usize,
    pub prefix: String,
    pub start_revision: i64,
    pub segments: Vec<WatchSegment>,
}

impl Watch {
    /// Every event received, in arrival order, with the response it came in
    /// (segment, response index).
    pub fn events(&self) -> Vec<(usize, usize, &Event)> {
        let mut out = Vec::new();
        for (s, segment) in self.segments.iter().enumerate() {
            for (r, resp) in segment.responses.iter().enumerate() {
                for e in &resp.events {
                    out.push((s, r, e));
                }
            }
        }
        out
    }
}

/// What every member holds under the prefix at the end, read after traffic
/// stopped and every member applied the final revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    /// Revision of the final linearizable read.
    pub revision: i64,
    pub kvs: Vec<Kv>,
    /// When the final read was invoked (after every op returned).
    pub at: Time,
    /// Per member: the revision and key-values it serves (serializable).
    pub members: Vec<(usize, i64, Vec<Kv>)>,
}

/// Everything one run recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub prefix: String,
    /// The store's revision before traffic started (nothing under `prefix`).
    pub start_revision: i64,
    pub ops: Vec<Op>,
    pub watches: Vec<Watch>,
    pub final_state: Option<FinalState>,
}
