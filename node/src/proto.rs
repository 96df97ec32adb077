//! The wire API (generated in the `witan-api` crate), under the path the
//! node has always used for it.

pub use witan_api::{authpb, etcdserverpb, mvccpb, witanpb};
