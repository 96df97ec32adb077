//! A learner serves only `Maintenance.Status` and serializable
//! `KV.Range`; every other gRPC call gets "etcdserver: rpc not supported for
//! learner", as in etcd (`api/v3rpc/interceptor.go`, `util.go`
//! isRPCSupportedForLearner). Clients with several endpoints move on to a
//! voter when they see it.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::EtcdError;
use crate::node::Member;

/// Calls a learner may serve. `KV.Range` checks `serializable` itself,
/// since the gate does not read request bodies. witan's own Membership
/// API is not etcd's to restrict: a learner hands it to the leader like
/// any member, so a client (the operator) may send it to any endpoint.
fn allowed_for_learner(path: &str) -> bool {
    matches!(
        path,
        "/etcdserverpb.Maintenance/Status" | "/etcdserverpb.KV/Range"
    ) || path.starts_with("/witanpb.Membership/")
}

/// Whether a request is a gRPC call; the HTTP endpoints and the JSON
/// gateway on the same port are not gated (etcd's gate is a gRPC
/// interceptor).
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Wraps the client port's service in [`LearnerGate`].
#[derive(Clone)]
pub struct LearnerGateLayer {
    member: Arc<Member>,
}

impl LearnerGateLayer {
    pub fn new(member: Arc<Member>) -> Self {
        LearnerGateLayer { member }
    }
}

impl<S> Layer<S> for LearnerGateLayer {
    type Service = LearnerGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LearnerGate {
            inner,
            member: self.member.clone(),
        }
    }
}

/// Answers the calls a learner does not serve itself and passes the rest
/// on. A plain service rather than axum middleware: it sits in front of
/// every request, and axum's `from_fn` boxes each one's future and clones
/// the service behind it.
#[derive(Clone)]
pub struct LearnerGate<S> {
    inner: S,
    member: Arc<Member>,
}

impl<S, B> Service<Request<B>> for LearnerGate<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_grpc(&request)
            && !allowed_for_learner(request.uri().path())
            && self.member.is_learner()
        {
            let refusal = tonic::Status::from(EtcdError::NotSupportedForLearner).into_http();
            return Either::Left(ready(Ok(refusal)));
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_grpc_calls_are_gated() {
        let call = |content_type: Option<&str>| {
            let mut request = Request::builder().uri("/etcdserverpb.KV/Put");
            if let Some(ct) = content_type {
                request = request.header(http::header::CONTENT_TYPE, ct);
            }
            is_grpc(&request.body(()).unwrap())
        };
        assert!(call(Some("application/grpc")));
        assert!(call(Some("application/grpc+proto")));
        assert!(!call(Some("application/json")));
        assert!(!call(None));
    }

    #[test]
    fn learners_serve_status_and_range_only() {
        assert!(allowed_for_learner("/etcdserverpb.Maintenance/Status"));
        assert!(allowed_for_learner("/etcdserverpb.KV/Range"));
        assert!(allowed_for_learner("/witanpb.Membership/ChangeVoters"));
        assert!(allowed_for_learner("/witanpb.Membership/Voters"));
        for path in [
            "/etcdserverpb.KV/Put",
            "/etcdserverpb.Watch/Watch",
            "/etcdserverpb.Cluster/MemberList",
            "/etcdserverpb.Lease/LeaseGrant",
            "/etcdserverpb.Maintenance/Alarm",
        ] {
            assert!(!allowed_for_learner(path), "{path}");
        }
    }
}
