//! Consensus: openraft's types, the peer network and the peer service.

pub mod network;
pub mod peer_service;
pub mod types;
