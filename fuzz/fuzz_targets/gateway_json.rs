//! The JSON gateway's request parsing: the first byte names a route, the
//! rest is its body, decoded exactly as the route does (pbjson's serde of
//! the etcdserverpb request, base64 bytes, int64 as strings, an empty body
//! as the empty request). A decoded request must survive the trip back to
//! JSON and to protobuf unchanged, and the KV and lease ones are then
//! validated and handled on an in-memory store like gRPC requests (the
//! gateway calls the same services). `/v3/lease/keepalive` reads a stream
//! of objects from one body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use witan_fuzz::{ClientKind, handle_client_request};
use witan_node::http::gateway::decode_request;
use witan_node::mvcc::scratch::ScratchStore;
use witan_node::proto::etcdserverpb as pb;

/// Decodes `body` as the route for `T` does; on success checks the round
/// trips and returns the protobuf encoding.
fn route<T>(body: &[u8]) -> Option<Vec<u8>>
where
    T: DeserializeOwned + Default + Serialize + Message + PartialEq + std::fmt::Debug,
{
    let req: T = decode_request(body).ok()?;
    // Serializing refuses what it cannot name (an unknown enum value);
    // that is an error answer, not a finding.
    if let Ok(json) = serde_json::to_vec(&req) {
        let back: T = decode_request(&json).expect("the gateway's own JSON decodes");
        assert_eq!(back, req, "JSON round trip changed the request");
    }
    let wire = req.encode_to_vec();
    // JSON nests deeper (serde_json allows 128 levels) than protobuf
    // decoding does (100), so a deep txn may not come back; the gateway
    // hands the decoded struct to the service, no protobuf involved.
    if let Ok(back) = T::decode(wire.as_slice()) {
        assert_eq!(back, req, "protobuf round trip changed the request");
    }
    Some(wire)
}

/// The routes, by the first byte modulo their number; KV and lease routes
/// name the gRPC handling they lead to.
const ROUTES: usize = 42;

fn dispatch(route_byte: u8, body: &[u8]) -> Option<(ClientKind, Vec<u8>)> {
    let kind = |k: ClientKind, wire: Option<Vec<u8>>| wire.map(|w| (k, w));
    match route_byte as usize % ROUTES {
        0 => kind(ClientKind::Range, route::<pb::RangeRequest>(body)),
        1 => kind(ClientKind::Put, route::<pb::PutRequest>(body)),
        2 => kind(
            ClientKind::DeleteRange,
            route::<pb::DeleteRangeRequest>(body),
        ),
        3 => kind(ClientKind::Txn, route::<pb::TxnRequest>(body)),
        4 => kind(ClientKind::Compaction, route::<pb::CompactionRequest>(body)),
        5 => kind(ClientKind::LeaseGrant, route::<pb::LeaseGrantRequest>(body)),
        6 => kind(
            ClientKind::LeaseRevoke,
            route::<pb::LeaseRevokeRequest>(body),
        ),
        7 => kind(
            ClientKind::LeaseTimeToLive,
            route::<pb::LeaseTimeToLiveRequest>(body),
        ),
        8 => kind(ClientKind::Watch, route::<pb::WatchRequest>(body)),
        9 => {
            // As `keep_alive`: a stream of objects; a bad first one is a
            // 400, a bad later one ends the requests.
            let mut decoded =
                serde_json::Deserializer::from_slice(body).into_iter::<pb::LeaseKeepAliveRequest>();
            if let Some(Ok(_)) = decoded.next() {
                decoded.map_while(Result::ok).for_each(drop);
            }
            None
        }
        10 => route::<pb::LeaseLeasesRequest>(body).and(None),
        11 => route::<pb::SnapshotRequest>(body).and(None),
        12 => route::<pb::MemberAddRequest>(body).and(None),
        13 => route::<pb::MemberRemoveRequest>(body).and(None),
        14 => route::<pb::MemberUpdateRequest>(body).and(None),
        15 => route::<pb::MemberListRequest>(body).and(None),
        16 => route::<pb::MemberPromoteRequest>(body).and(None),
        17 => route::<pb::StatusRequest>(body).and(None),
        18 => route::<pb::HashRequest>(body).and(None),
        19 => route::<pb::HashKvRequest>(body).and(None),
        20 => route::<pb::AlarmRequest>(body).and(None),
        21 => route::<pb::DefragmentRequest>(body).and(None),
        22 => route::<pb::MoveLeaderRequest>(body).and(None),
        23 => route::<pb::DowngradeRequest>(body).and(None),
        24 => route::<pb::AuthEnableRequest>(body).and(None),
        25 => route::<pb::AuthDisableRequest>(body).and(None),
        26 => route::<pb::AuthStatusRequest>(body).and(None),
        27 => route::<pb::AuthenticateRequest>(body).and(None),
        28 => route::<pb::AuthUserAddRequest>(body).and(None),
        29 => route::<pb::AuthUserGetRequest>(body).and(None),
        30 => route::<pb::AuthUserListRequest>(body).and(None),
        31 => route::<pb::AuthUserDeleteRequest>(body).and(None),
        32 => route::<pb::AuthUserChangePasswordRequest>(body).and(None),
        33 => route::<pb::AuthUserGrantRoleRequest>(body).and(None),
        34 => route::<pb::AuthUserRevokeRoleRequest>(body).and(None),
        35 => route::<pb::AuthRoleAddRequest>(body).and(None),
        36 => route::<pb::AuthRoleGetRequest>(body).and(None),
        37 => route::<pb::AuthRoleListRequest>(body).and(None),
        38 => route::<pb::AuthRoleDeleteRequest>(body).and(None),
        39 => route::<pb::AuthRoleGrantPermissionRequest>(body).and(None),
        40 => route::<pb::AuthRoleRevokePermissionRequest>(body).and(None),
        _ => kind(
            ClientKind::LeaseKeepAlive,
            route::<pb::LeaseKeepAliveRequest>(body),
        ),
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let seed = |route: u8, json: &str| {
        let mut out = vec![route];
        out.extend_from_slice(json.as_bytes());
        out
    };
    vec![
        seed(
            0,
            r#"{"key":"Zm9v","range_end":"AA==","limit":"10","sort_order":"DESCEND","sort_target":"MOD","revision":"2","keys_only":true}"#,
        ),
        seed(
            1,
            r#"{"key":"Zm9v","value":"YmFy","prev_kv":true,"lease":"0"}"#,
        ),
        seed(2, r#"{"key":"Zm9v","range_end":"Zm9w","prev_kv":true}"#),
        seed(
            3,
            r#"{"compare":[{"key":"Zm9v","target":"VALUE","result":"EQUAL","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}],"failure":[{"request_range":{"key":"Zm9v"}},{"request_txn":{"success":[{"request_delete_range":{"key":"YQ=="}}]}}]}"#,
        ),
        seed(4, r#"{"revision":"3","physical":true}"#),
        seed(5, r#"{"TTL":"60","ID":"7"}"#),
        seed(6, r#"{"ID":"7"}"#),
        seed(7, r#"{"ID":"7","keys":true}"#),
        seed(
            8,
            r#"{"create_request":{"key":"Zm9v","range_end":"AA==","start_revision":"2","prev_kv":true,"filters":["NOPUT"],"progress_notify":true}}"#,
        ),
        seed(9, "{\"ID\":\"7\"}\n{\"ID\":\"8\"}"),
        seed(
            12,
            r#"{"peerURLs":["http://127.0.0.1:2380"],"isLearner":true}"#,
        ),
        seed(
            20,
            r#"{"action":"ACTIVATE","memberID":"1","alarm":"NOSPACE"}"#,
        ),
        seed(
            28,
            r#"{"name":"root","password":"pw","options":{"no_password":false}}"#,
        ),
        seed(
            39,
            r#"{"name":"r","perm":{"permType":"READWRITE","key":"YQ==","range_end":"Yg=="}}"#,
        ),
        seed(41, ""),
    ]
}

fuzz_target!(
    init: witan_fuzz::write_seeds_if_asked(seeds),
    |data: &[u8]| {
        let Some((&route_byte, body)) = data.split_first() else {
            return;
        };
        if let Some((kind, wire)) = dispatch(route_byte, body) {
            if let Ok(mut store) = ScratchStore::new() {
                let _ = handle_client_request(&mut store, kind, &wire);
            }
        }
    }
);
