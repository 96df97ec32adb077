//! Generated protobuf code: etcd's v3 API (`etcdserverpb`, `mvccpb`,
//! `authpb`) and witan's internal peer protocol (`witanpb`).
//!
//! The modules are siblings because prost refers across packages with
//! `super::mvccpb::...` paths.
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod witanpb {
    tonic::include_proto!("witanpb");
}
