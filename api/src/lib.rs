//! witan's wire API, generated from the protos in `proto/`:
//!
//! - etcd's v3 API (`etcdserverpb`, `mvccpb`, `authpb`): our own copies of
//!   etcd's files with the same packages, messages and field numbers, with
//!   serde impls in protojson form for the JSON gateway;
//! - `witanpb.Membership` (`proto/witanpb/membership.proto`): witan's public
//!   joint voter change, which the operator calls;
//! - witan's member-to-member protocol (`witanpb.Raft` and the internal
//!   messages): not a public API, it changes with the node.
//!
//! Clients (the operator, tools) depend on this crate alone, not on the
//! node. It depends on nothing of witan's.
//!
//! The modules are siblings because prost refers across packages with
//! `super::mvccpb::...` paths.
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
pub mod witanpb {
    tonic::include_proto!("witanpb");
}
