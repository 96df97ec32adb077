//! witan-node: a replicated, durable key-value store that speaks the etcd v3
//! API. Raft (openraft) orders writes, redb keeps them, tonic serves them.
//!
//! Layout: `mvcc` (etcd's data model, pure of I/O but for redb tables),
//! `storage` (the redb database: log, state machine, snapshots), `raft`
//! (types, peer network and service), `server` (the etcd gRPC services),
//! `auth` (users, roles, permissions, tokens), `http` (etcd's HTTP health, version and metrics endpoints, on the same
//! port), `metrics` (etcd's Prometheus metrics),
//! `node` (wiring a member together), `config` (flags).
//! Nothing here depends on Kubernetes.

pub mod auth;
pub mod client_identity;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod ids;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod proto;
pub mod raft;
pub mod server;
pub mod storage;
pub mod tls;
