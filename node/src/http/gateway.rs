//! etcd's JSON gateway: `POST /v3/<service>/<call>` with the request as
//! protojson, answered with the response as protojson, as etcd's
//! grpc-gateway does (proto field names, int64 as strings, bytes as base64,
//! unset fields left out). `/v3beta/...` is the same. Each route calls the
//! gRPC service implementation, so both front ends give the same answers.
//!
//! The streaming calls answer with newline-delimited `{"result": ...}`
//! objects (an error mid-stream is an `{"error": ...}` line), as etcd's
//! gateway does: `/v3/watch` (one request, then events until the client
//! hangs up), `/v3/lease/keepalive` (one answer per request in the body,
//! then the end) and `/v3/maintenance/snapshot` (the snapshot's chunks).
//!
//! Auth: a request's `Authorization` header carries the token from
//! `/v3/auth/authenticate`, as etcd's gateway; client certificates are not
//! a gateway user, as in etcd.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

use crate::auth::Credentials;
use crate::node::Member;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{LeaseKeepAliveRequest, SnapshotRequest, WatchRequest};
use crate::server::auth::AuthService;
use crate::server::cluster::ClusterService;
use crate::server::kv::KvService;
use crate::server::lease::LeaseService;
use crate::server::maintenance::MaintenanceService;
use crate::server::watch::WatchService;

/// The gateway's routes under `/v3` and `/v3beta`.
pub fn router(member: Arc<Member>) -> Router {
    let mut router = Router::new();
    let kv = Arc::new(KvService::new(member.clone()));
    let lease = Arc::new(LeaseService::new(member.clone()));
    let cluster = Arc::new(ClusterService::new(member.clone()));
    let maintenance = Arc::new(MaintenanceService::new(member.clone()));
    let auth = Arc::new(AuthService::new(member.clone()));
    for prefix in ["/v3", "/v3beta"] {
        let watcher = Arc::new(WatchService::new(member.clone()));
        router = auth_routes(router, prefix, &auth);
        router = router
            .route(
                &format!("{prefix}/watch"),
                post(move |headers: HeaderMap, body: Bytes| {
                    watch(watcher.clone(), credentials(&headers), body)
                }),
            )
            .route(
                &format!("{prefix}/kv/range"),
                unary(kv.clone(), |s, r| async move { s.range(r).await }),
            )
            .route(
                &format!("{prefix}/kv/put"),
                unary(kv.clone(), |s, r| async move { s.put(r).await }),
            )
            .route(
                &format!("{prefix}/kv/deleterange"),
                unary(kv.clone(), |s, r| async move { s.delete_range(r).await }),
            )
            .route(
                &format!("{prefix}/kv/txn"),
                unary(kv.clone(), |s, r| async move { s.txn(r).await }),
            )
            .route(
                &format!("{prefix}/kv/compaction"),
                unary(kv.clone(), |s, r| async move { s.compact(r).await }),
            )
            .route(
                &format!("{prefix}/lease/grant"),
                unary(lease.clone(), |s, r| async move { s.lease_grant(r).await }),
            )
            .route(
                &format!("{prefix}/lease/keepalive"),
                post({
                    let lease = lease.clone();
                    move |body: Bytes| keep_alive(lease.clone(), body)
                }),
            )
            .route(
                &format!("{prefix}/maintenance/snapshot"),
                post({
                    let maintenance = maintenance.clone();
                    move |headers: HeaderMap, body: Bytes| {
                        snapshot(maintenance.clone(), headers, body)
                    }
                }),
            )
            .route(
                &format!("{prefix}/cluster/member/add"),
                unary(cluster.clone(), |s, r| async move { s.member_add(r).await }),
            )
            .route(
                &format!("{prefix}/cluster/member/remove"),
                unary(
                    cluster.clone(),
                    |s, r| async move { s.member_remove(r).await },
                ),
            )
            .route(
                &format!("{prefix}/cluster/member/update"),
                unary(
                    cluster.clone(),
                    |s, r| async move { s.member_update(r).await },
                ),
            )
            .route(
                &format!("{prefix}/cluster/member/list"),
                unary(
                    cluster.clone(),
                    |s, r| async move { s.member_list(r).await },
                ),
            )
            .route(
                &format!("{prefix}/cluster/member/promote"),
                unary(
                    cluster.clone(),
                    |s, r| async move { s.member_promote(r).await },
                ),
            )
            .route(
                &format!("{prefix}/maintenance/status"),
                unary(maintenance.clone(), |s, r| async move { s.status(r).await }),
            )
            .route(
                &format!("{prefix}/maintenance/hash"),
                unary(maintenance.clone(), |s, r| async move { s.hash(r).await }),
            )
            .route(
                &format!("{prefix}/maintenance/hashkv"),
                unary(
                    maintenance.clone(),
                    |s, r| async move { s.hash_kv(r).await },
                ),
            )
            .route(
                &format!("{prefix}/maintenance/alarm"),
                unary(maintenance.clone(), |s, r| async move { s.alarm(r).await }),
            )
            .route(
                &format!("{prefix}/maintenance/defragment"),
                unary(
                    maintenance.clone(),
                    |s, r| async move { s.defragment(r).await },
                ),
            )
            .route(
                &format!("{prefix}/maintenance/transfer-leadership"),
                unary(
                    maintenance.clone(),
                    |s, r| async move { s.move_leader(r).await },
                ),
            )
            .route(
                &format!("{prefix}/maintenance/downgrade"),
                unary(
                    maintenance.clone(),
                    |s, r| async move { s.downgrade(r).await },
                ),
            );
        // Revoke, time-to-live and leases are also mounted under /kv/lease.
        for base in ["lease", "kv/lease"] {
            router = router
                .route(
                    &format!("{prefix}/{base}/revoke"),
                    unary(lease.clone(), |s, r| async move { s.lease_revoke(r).await }),
                )
                .route(
                    &format!("{prefix}/{base}/timetolive"),
                    unary(lease.clone(), |s, r| async move {
                        s.lease_time_to_live(r).await
                    }),
                )
                .route(
                    &format!("{prefix}/{base}/leases"),
                    unary(lease.clone(), |s, r| async move { s.lease_leases(r).await }),
                );
        }
    }
    router
}

/// `/v3/auth/...`: etcd's Auth service paths.
fn auth_routes(router: Router, prefix: &str, auth: &Arc<AuthService>) -> Router {
    let route = |path: &str| format!("{prefix}/auth/{path}");
    router
        .route(
            &route("enable"),
            unary(auth.clone(), |s, r| async move { s.auth_enable(r).await }),
        )
        .route(
            &route("disable"),
            unary(auth.clone(), |s, r| async move { s.auth_disable(r).await }),
        )
        .route(
            &route("status"),
            unary(auth.clone(), |s, r| async move { s.auth_status(r).await }),
        )
        .route(
            &route("authenticate"),
            unary(auth.clone(), |s, r| async move { s.authenticate(r).await }),
        )
        .route(
            &route("user/add"),
            unary(auth.clone(), |s, r| async move { s.user_add(r).await }),
        )
        .route(
            &route("user/get"),
            unary(auth.clone(), |s, r| async move { s.user_get(r).await }),
        )
        .route(
            &route("user/list"),
            unary(auth.clone(), |s, r| async move { s.user_list(r).await }),
        )
        .route(
            &route("user/delete"),
            unary(auth.clone(), |s, r| async move { s.user_delete(r).await }),
        )
        .route(
            &route("user/changepw"),
            unary(auth.clone(), |s, r| async move {
                s.user_change_password(r).await
            }),
        )
        .route(
            &route("user/grant"),
            unary(
                auth.clone(),
                |s, r| async move { s.user_grant_role(r).await },
            ),
        )
        .route(
            &route("user/revoke"),
            unary(
                auth.clone(),
                |s, r| async move { s.user_revoke_role(r).await },
            ),
        )
        .route(
            &route("role/add"),
            unary(auth.clone(), |s, r| async move { s.role_add(r).await }),
        )
        .route(
            &route("role/get"),
            unary(auth.clone(), |s, r| async move { s.role_get(r).await }),
        )
        .route(
            &route("role/list"),
            unary(auth.clone(), |s, r| async move { s.role_list(r).await }),
        )
        .route(
            &route("role/delete"),
            unary(auth.clone(), |s, r| async move { s.role_delete(r).await }),
        )
        .route(
            &route("role/grant"),
            unary(auth.clone(), |s, r| async move {
                s.role_grant_permission(r).await
            }),
        )
        .route(
            &route("role/revoke"),
            unary(auth.clone(), |s, r| async move {
                s.role_revoke_permission(r).await
            }),
        )
}

/// The gateway's credentials: the `Authorization` header's token.
fn credentials(headers: &HeaderMap) -> Credentials {
    Credentials {
        token: headers
            .get(header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        cert_common_name: None,
    }
}

/// A gRPC request carrying the gateway caller's token as metadata.
fn grpc_request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = headers.get(header::AUTHORIZATION)
        && let Ok(value) = tonic::metadata::MetadataValue::try_from(token.as_bytes())
    {
        request.metadata_mut().insert("token", value);
    }
    request
}

/// A POST route that decodes `Req`, calls `S`'s method and encodes the answer.
fn unary<S, Req, Resp, F, Fut>(service: Arc<S>, call: F) -> axum::routing::MethodRouter
where
    S: Send + Sync + 'static,
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Arc<S>, tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>> + Send + 'static,
{
    post(move |headers: HeaderMap, body: Bytes| {
        let service = service.clone();
        let call = call.clone();
        async move {
            let req: Req = match decode(&body) {
                Ok(req) => req,
                Err(reason) => return error(&Status::invalid_argument(reason)),
            };
            match call(service, grpc_request(&headers, req)).await {
                Ok(resp) => match serde_json::to_vec(resp.get_ref()) {
                    Ok(json) => {
                        ([(header::CONTENT_TYPE, "application/json")], json).into_response()
                    }
                    Err(e) => error(&Status::internal(e.to_string())),
                },
                Err(status) => error(&status),
            }
        }
    })
}

/// `/v3/watch`: the body is one WatchRequest; the answer is a stream of
/// `{"result": WatchResponse}` lines until the client hangs up.
async fn watch(service: Arc<WatchService>, credentials: Credentials, body: Bytes) -> Response {
    let req: WatchRequest = match decode(&body) {
        Ok(req) => req,
        Err(reason) => return error(&Status::invalid_argument(reason)),
    };
    // The request side stays open (a gateway client sends one request).
    let inbound = futures::stream::once(async move { Ok(req) }).chain(futures::stream::pending());
    result_lines(service.open(Box::pin(inbound), credentials))
}

/// `/v3/lease/keepalive`: the body holds one or more LeaseKeepAliveRequest
/// objects; each gets a `{"result": LeaseKeepAliveResponse}` line, then the
/// stream ends, as etcd's gateway closes its send side at the body's end. As
/// there, a first request that does not decode is a 400, and a later one
/// ends the requests.
async fn keep_alive(service: Arc<LeaseService>, body: Bytes) -> Response {
    let mut decoded =
        serde_json::Deserializer::from_slice(&body).into_iter::<LeaseKeepAliveRequest>();
    let mut requests = Vec::new();
    match decoded.next() {
        // An empty body sends nothing; the stream ends at once.
        None => {}
        Some(Ok(req)) => requests.push(req),
        Some(Err(e)) => {
            return error(&Status::invalid_argument(format!(
                "invalid request body: {e}"
            )));
        }
    }
    requests.extend(decoded.map_while(Result::ok));
    let inbound = futures::stream::iter(requests.into_iter().map(Ok));
    result_lines(service.open(inbound))
}

/// `/v3/maintenance/snapshot`: the body is one SnapshotRequest; the answer
/// is the snapshot's `{"result": SnapshotResponse}` lines (`blob` in
/// base64, `remaining_bytes` counting down).
async fn snapshot(service: Arc<MaintenanceService>, headers: HeaderMap, body: Bytes) -> Response {
    let req: SnapshotRequest = match decode(&body) {
        Ok(req) => req,
        Err(reason) => return error(&Status::invalid_argument(reason)),
    };
    match service.snapshot(grpc_request(&headers, req)).await {
        Ok(stream) => result_lines(stream.into_inner()),
        // Nothing was streamed yet: a plain error answer, as etcd's gateway
        // gives when the call fails before its first message.
        Err(status) => error(&status),
    }
}

/// A streaming answer: one JSON line per item, `{"result": ...}` or
/// grpc-gateway's `{"error": {...}}`.
fn result_lines<T, S>(stream: S) -> Response
where
    T: Serialize,
    S: futures::Stream<Item = Result<T, Status>> + Send + 'static,
{
    let lines = stream.map(|item| {
        let item = item.and_then(|resp| {
            serde_json::to_value(resp).map_err(|e| Status::internal(e.to_string()))
        });
        let mut line = match item {
            Ok(resp) => serde_json::json!({ "result": resp }),
            Err(status) => serde_json::json!({
                "error": {
                    "grpc_code": status.code() as i32,
                    "http_code": http_status(status.code()).as_u16(),
                    "message": status.message(),
                    "http_status": http_status(status.code()).canonical_reason().unwrap_or(""),
                }
            }),
        }
        .to_string();
        line.push('\n');
        Ok::<_, std::convert::Infallible>(line)
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// An empty body is the empty request, as grpc-gateway treats it.
fn decode<Req: DeserializeOwned + Default>(body: &[u8]) -> Result<Req, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

/// grpc-gateway's HTTP status for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error body: etcd's gateway fields (`error` from grpc-gateway v1,
/// `code` and `message` from v2), so clients of either version read it.
fn error(status: &Status) -> Response {
    let body = serde_json::json!({
        "error": status.message(),
        "code": status.code() as i32,
        "message": status.message(),
    });
    (
        http_status(status.code()),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Decodes a unary route's body into its request, exactly as the route
/// does (the fuzz target `gateway_json` drives it).
pub fn decode_request<Req: DeserializeOwned + Default>(body: &[u8]) -> Result<Req, String> {
    decode(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{PutRequest, RangeResponse, ResponseHeader};
    use crate::proto::mvccpb::KeyValue;

    #[test]
    fn requests_decode_from_proto_names_and_base64() {
        let req: PutRequest =
            decode(br#"{"key":"Zm9v","value":"YmFy","prev_kv":true,"lease":"7"}"#).unwrap();
        assert_eq!(req.key, b"foo");
        assert_eq!(req.value, b"bar");
        assert!(req.prev_kv);
        assert_eq!(req.lease, 7);
        let empty: PutRequest = decode(b" ").unwrap();
        assert_eq!(empty, PutRequest::default());
        assert!(decode::<PutRequest>(b"{not json").is_err());
    }

    #[test]
    fn responses_encode_like_etcds_gateway() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                value: b"bar".to_vec(),
                create_revision: 3,
                mod_revision: 3,
                version: 1,
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let json: serde_json::Value = serde_json::to_value(&resp).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "header": {"cluster_id": "1", "member_id": "2", "revision": "3", "raft_term": "4"},
                "kvs": [{"key": "Zm9v", "create_revision": "3", "mod_revision": "3", "version": "1", "value": "YmFy"}],
                "count": "1"
            })
        );
    }

    #[test]
    fn status_codes_follow_grpc_gateway() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::Unimplemented),
            StatusCode::NOT_IMPLEMENTED
        );
    }
}
