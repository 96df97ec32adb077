//! The etcd v3 gRPC services on the client listener.

pub mod auth;
pub mod authority;
pub mod batched_writes;
pub mod cluster;
pub mod kv;
pub mod learner_gate;
pub mod lease;
pub mod maintenance;
pub mod membership;
pub mod metered;
pub mod watch;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio_stream::StreamExt as _;

use crate::node::Member;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::witanpb::membership_server::MembershipServer;
use crate::tls::listener::{self, Acceptor};

/// etcd's allowance for gRPC framing on top of `--max-request-bytes`.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Serves the client API on one listener until `stop` flips; over TLS
/// when `tls` is given (an `https://` listen URL).
pub async fn serve(
    member: Arc<Member>,
    listener: TcpListener,
    tls: Option<Acceptor>,
    mut stop: tokio_watch::Receiver<bool>,
) {
    let max_recv = member.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(
        KvServer::new(kv::KvService::new(member.clone())).max_decoding_message_size(max_recv),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(member.clone()))
            .max_decoding_message_size(max_recv),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService::new(member.clone()))
            .max_decoding_message_size(max_recv),
    )
    .add_service(ClusterServer::new(cluster::ClusterService::new(
        member.clone(),
    )))
    .add_service(MaintenanceServer::new(
        maintenance::MaintenanceService::new(member.clone()),
    ))
    .add_service(MembershipServer::new(membership::MembershipService::new(
        member.clone(),
    )))
    .add_service(crate::proto::etcdserverpb::auth_server::AuthServer::new(
        auth::AuthService::new(member.clone()),
    ))
    .add_service(health_service);
    // etcd's HTTP endpoints (/health, /readyz, ...) share the port, over
    // HTTP/1.1 or HTTP/2 alike.
    let routes = tonic::service::Routes::from(
        grpc.routes()
            .into_axum_router()
            .merge(crate::http::router(member.clone())),
    );
    let result = tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        // go-grpc-prometheus' metrics, for every gRPC service on this port.
        .layer(metered::GrpcMetricsLayer::new(member.metrics.grpc.clone()))
        .layer(learner_gate::LearnerGateLayer::new(member.clone()))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            // Accepted (and decrypted) connections get etcdctl's
            // `:authority` repaired, and their writes batched.
            listener::incoming(listener, tls).map(|conn| {
                conn.map(|c| batched_writes::BatchedWrites::new(authority::AuthorityRepair::new(c)))
            }),
            async move {
                let _ = stop.changed().await;
            },
        )
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "client server failed");
    }
}

/// Serves only the HTTP endpoints (/metrics, /health, /livez, /readyz,
/// /version) on a `--listen-metrics-urls` listener until `stop` flips, so
/// probes and Prometheus reach a member whose client port demands client
/// certificates.
pub async fn serve_http_endpoints(
    member: Arc<Member>,
    listener: TcpListener,
    tls: Option<Acceptor>,
    mut stop: tokio_watch::Receiver<bool>,
) {
    let routes = tonic::service::Routes::from(crate::http::endpoints(member));
    let result = tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(listener::incoming(listener, tls), async move {
            let _ = stop.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "metrics server failed");
    }
}
