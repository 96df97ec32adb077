//! Generated protobuf code: etcd's v3 API (`etcdserverpb`, `mvccpb`,
//! `authpb`, with serde impls in protojson form for the JSON gateway) and
//! witan's internal peer protocol (`witanpb`).
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
