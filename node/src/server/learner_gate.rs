//! A learner serves only `Maintenance.Status` and serializable
//! `KV.Range`; every other gRPC call gets "etcdserver: rpc not supported for
//! learner", as in etcd (`api/v3rpc/interceptor.go`, `util.go`
//! isRPCSupportedForLearner). Clients with several endpoints move on to a
//! voter when they see it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

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

pub async fn refuse_for_learner(
    State(member): State<Arc<Member>>,
    request: Request,
    next: Next,
) -> Response {
    if allowed_for_learner(request.uri().path()) || !member.is_learner() {
        return next.run(request).await;
    }
    tonic::Status::from(EtcdError::NotSupportedForLearner).into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

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
