//! Shared by witan's fuzz targets (`fuzz_targets/`): splitting one fuzz
//! input into several requests, handling a client request the way a member
//! does (decode, validate, then read or apply) on an in-memory MVCC store,
//! and writing the seed corpus.
//!
//! A finding is a panic, a hang or an allocation beyond libFuzzer's
//! `-rss_limit_mb`; every error a request can get is fine.

use prost::Message;
use witan_node::error::EtcdError;
use witan_node::mvcc::apply::ApplyError;
use witan_node::mvcc::read;
use witan_node::mvcc::scratch::ScratchStore;
use witan_node::mvcc::validate;
use witan_node::proto::etcdserverpb::watch_request::RequestUnion;
use witan_node::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, TxnRequest, WatchRequest,
};
use witan_node::proto::witanpb::InternalRequest;
use witan_node::proto::witanpb::internal_request::Request as Internal;
use witan_node::storage::snapshot::SnapshotImage;
use witan_node::storage::{Store, hash};

/// etcd's default `--max-txn-ops`, which witan uses too.
pub const MAX_TXN_OPS: usize = 128;
/// The smallest lease TTL a default member grants.
pub const MIN_LEASE_TTL_SECS: i64 = 1;
/// Requests handled per fuzz input at most, so one input stays fast.
pub const MAX_FRAMES: usize = 32;

/// Splits `data` into `(kind, payload)` frames: one kind byte, a
/// little-endian u16 length, then that many bytes (fewer at the end).
pub fn frames(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while out.len() < MAX_FRAMES {
        let Some((&kind, rest)) = data.split_first() else {
            break;
        };
        let (len, rest) = match rest {
            [lo, hi, rest @ ..] => (u16::from_le_bytes([*lo, *hi]) as usize, rest),
            _ => (rest.len(), &[][..]),
        };
        let (payload, rest) = rest.split_at(len.min(rest.len()));
        out.push((kind, payload));
        data = rest;
    }
    out
}

/// Encodes frames the way [`frames`] reads them (for seeds).
pub fn encode_frames(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, payload) in frames {
        out.push(*kind);
        let len = u16::try_from(payload.len()).expect("seed frames are small");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

/// The client requests `grpc_request` decodes, by the kind byte modulo
/// their number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compaction,
    LeaseGrant,
    LeaseRevoke,
    LeaseKeepAlive,
    LeaseTimeToLive,
    Watch,
    /// A write as a follower forwards it (no client-side validation).
    Internal,
}

impl ClientKind {
    pub const ALL: [ClientKind; 11] = [
        ClientKind::Range,
        ClientKind::Put,
        ClientKind::DeleteRange,
        ClientKind::Txn,
        ClientKind::Compaction,
        ClientKind::LeaseGrant,
        ClientKind::LeaseRevoke,
        ClientKind::LeaseKeepAlive,
        ClientKind::LeaseTimeToLive,
        ClientKind::Watch,
        ClientKind::Internal,
    ];

    pub fn of(byte: u8) -> ClientKind {
        Self::ALL[byte as usize % Self::ALL.len()]
    }

    pub fn byte(self) -> u8 {
        Self::ALL
            .iter()
            .position(|k| *k == self)
            .expect("every kind is in ALL") as u8
    }
}

/// What handling one request came to; only used to tell the fuzzer's
/// coverage apart, never asserted on.
#[derive(Debug)]
pub enum Outcome {
    Undecodable,
    Refused(EtcdError),
    Answered,
}

/// Handles one client request the way a member does: prost decoding (as
/// tonic does), the checks made before proposing (`mvcc::validate`), then
/// the read or the apply on `store`.
pub fn handle_client_request(store: &mut ScratchStore, kind: ClientKind, raw: &[u8]) -> Outcome {
    fn decoded<M: Message + Default>(raw: &[u8]) -> Option<M> {
        M::decode(raw).ok()
    }
    let result = match kind {
        ClientKind::Range => {
            let Some(req) = decoded::<RangeRequest>(raw) else {
                return Outcome::Undecodable;
            };
            validate::check_range(&req).and_then(|()| read_on(store, |v| v.range(&req)))
        }
        ClientKind::Put => {
            let Some(req) = decoded::<PutRequest>(raw) else {
                return Outcome::Undecodable;
            };
            validate::check_put(&req).and_then(|()| apply(store, &Internal::Put(req)))
        }
        ClientKind::DeleteRange => {
            let Some(req) = decoded::<DeleteRangeRequest>(raw) else {
                return Outcome::Undecodable;
            };
            validate::check_delete_range(&req)
                .and_then(|()| apply(store, &Internal::DeleteRange(req)))
        }
        ClientKind::Txn => {
            let Some(req) = decoded::<TxnRequest>(raw) else {
                return Outcome::Undecodable;
            };
            validate::check_txn(&req, MAX_TXN_OPS).and_then(|()| {
                if read::txn_writes(&req) {
                    apply(store, &Internal::Txn(req))
                } else {
                    read_on(store, |v| v.read_only_txn(&req))
                }
            })
        }
        ClientKind::Compaction => {
            let Some(req) = decoded::<CompactionRequest>(raw) else {
                return Outcome::Undecodable;
            };
            apply(store, &Internal::Compaction(req))
        }
        ClientKind::LeaseGrant => {
            let Some(mut req) = decoded::<LeaseGrantRequest>(raw) else {
                return Outcome::Undecodable;
            };
            validate::lease_ttl(req.ttl, MIN_LEASE_TTL_SECS).and_then(|ttl| {
                req.ttl = ttl;
                if req.id == 0 {
                    // The server picks a random positive id; any fixed one
                    // keeps inputs reproducible.
                    req.id = 1;
                }
                apply(store, &Internal::LeaseGrant(req))
            })
        }
        ClientKind::LeaseRevoke => {
            let Some(req) = decoded::<LeaseRevokeRequest>(raw) else {
                return Outcome::Undecodable;
            };
            apply(store, &Internal::LeaseRevoke(req))
        }
        // Answered from the lessor's clock, not the store: the keys on
        // the lease are what a member reads for them.
        ClientKind::LeaseKeepAlive => {
            let Some(req) = decoded::<LeaseKeepAliveRequest>(raw) else {
                return Outcome::Undecodable;
            };
            lease_keys(store, req.id)
        }
        ClientKind::LeaseTimeToLive => {
            let Some(req) = decoded::<LeaseTimeToLiveRequest>(raw) else {
                return Outcome::Undecodable;
            };
            lease_keys(store, req.id)
        }
        ClientKind::Watch => {
            let Some(req) = decoded::<WatchRequest>(raw) else {
                return Outcome::Undecodable;
            };
            watch(store, &req)
        }
        ClientKind::Internal => {
            let Some(req) = decoded::<InternalRequest>(raw) else {
                return Outcome::Undecodable;
            };
            match &req.request {
                Some(request) => apply(store, request),
                None => Ok(()),
            }
        }
    };
    match result {
        Ok(()) => Outcome::Answered,
        Err(e) => Outcome::Refused(e),
    }
}

fn read_on<T>(
    store: &ScratchStore,
    f: impl FnOnce(&witan_node::mvcc::scratch::ScratchView) -> Result<T, EtcdError>,
) -> Result<(), EtcdError> {
    store
        .view(f)
        .map_err(|e| EtcdError::Internal(e.to_string()))?
        .map(drop)
}

fn lease_keys(store: &mut ScratchStore, id: i64) -> Result<(), EtcdError> {
    // The lease tables are open in the applier's (write) transaction; it
    // changes nothing here.
    let (keys, _) = store
        .write(|a| a.lease_keys_of(id))
        .map_err(|e| EtcdError::Internal(e.to_string()))?;
    keys.map(drop)
        .map_err(|e| EtcdError::Internal(e.to_string()))
}

/// A watch's create request as the watch service handles it: a negative
/// start revision is refused, otherwise the history from the start
/// revision (or the next one) to the current one is replayed.
fn watch(store: &ScratchStore, req: &WatchRequest) -> Result<(), EtcdError> {
    let Some(RequestUnion::CreateRequest(create)) = &req.request_union else {
        return Ok(());
    };
    if create.start_revision < 0 {
        return Err(EtcdError::Internal("negative start revision".into()));
    }
    read_on(store, |v| {
        let from = if create.start_revision == 0 {
            v.revision + 1
        } else {
            create.start_revision
        };
        v.events(from, v.revision, create.prev_kv)
    })
}

/// Applies one replicated request to `store` in its own batch, checking
/// the revision bookkeeping stays sane.
pub fn apply(store: &mut ScratchStore, request: &Internal) -> Result<(), EtcdError> {
    let before = store.revision;
    let result = store
        .write(|a| -> Result<(), ApplyError> {
            match request {
                Internal::Put(r) => a.put(r).map(drop),
                Internal::DeleteRange(r) => a.delete_range(r).map(drop),
                Internal::Txn(r) => a.txn(r).map(drop),
                Internal::Compaction(r) => a.compact(r),
                Internal::LeaseGrant(r) => a.lease_grant(r).map(drop),
                Internal::LeaseRevoke(r) => a.lease_revoke(r),
                // Membership, alarm and auth requests touch other tables.
                _ => Ok(()),
            }
        })
        .map_err(|e| EtcdError::Internal(e.to_string()))?;
    assert!(
        store.revision >= before && store.revision <= before + 1,
        "one request moved the revision from {before} to {}",
        store.revision
    );
    assert!(
        store.compact_revision <= store.revision,
        "compact revision {} above revision {}",
        store.compact_revision,
        store.revision
    );
    match result.0 {
        Ok(()) => Ok(()),
        Err(ApplyError::Rejected(e)) => Err(e),
        Err(ApplyError::Storage(e)) => Err(EtcdError::Internal(e.to_string())),
    }
}

/// Reads everything `store` holds through the MVCC read path: every key
/// at the current revision and at the compact revision, and every event
/// still retained (with previous versions), as watches replay them.
pub fn read_everything(store: &ScratchStore) {
    let all = |revision| RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    };
    let _ = read_on(store, |v| v.range(&all(0)));
    let _ = read_on(store, |v| v.range(&all(v.compact_revision)));
    let _ = read_on(store, |v| v.events(v.compact_revision, v.revision, true));
}

/// Opens a restored data dir as a member's first start does and reads
/// it all: the identity, the whole-state hash, then every table through an
/// in-memory copy and the MVCC read path (keys, history, watch order).
pub fn read_restored(dir: &std::path::Path) {
    let Ok(store) = Store::open(dir) else {
        return;
    };
    let _ = store.identity();
    let Ok(txn) = store.db().begin_read() else {
        return;
    };
    let _ = hash::hash_state(&txn);
    let Ok(image) = SnapshotImage::capture(&txn) else {
        return;
    };
    drop(txn);
    install_image(&image);
}

/// Installs a snapshot image into a fresh in-memory store, as a member
/// installs one from its leader, and reads everything back.
pub fn install_image(image: &SnapshotImage) {
    let _ = image.lease_ttls();
    let Ok(mut store) = ScratchStore::new() else {
        return;
    };
    let Ok(txn) = store.db.begin_write() else {
        return;
    };
    if image.restore(&txn).is_err() || txn.commit().is_err() {
        return;
    }
    store.revision = image.revision;
    store.compact_revision = image.compact_revision;
    read_everything(&store);
    let _ = read_on(&store, |v| hash::hash_kv(v, v.revision));
}

/// When `WITAN_FUZZ_WRITE_SEEDS` names a directory, writes `seeds` there
/// as `seed-N` and exits: `scripts/fuzz.sh --seeds` regenerates the
/// committed seed corpus from the same types the targets decode.
pub fn write_seeds_if_asked(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("WITAN_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("creating the seed directory");
    for (i, seed) in seeds().into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), seed).expect("writing a seed");
    }
    std::process::exit(0);
}
