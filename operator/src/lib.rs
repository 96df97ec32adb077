//! witan-operator: reconciles `KvCluster` resources into witan clusters.
//!
//! Layout: `crd` (the resource types), `resources` (pure builders of the
//! children), `planner` (pure: the next safe membership or rollout step),
//! `status` (pure: status from what was observed), `members` (the etcd v3
//! member API behind a trait), `controller` (the only module with side
//! effects on Kubernetes besides `leader_election`, which holds the
//! operator's Lease). This crate must not depend on `witan-node`: it
//! talks to members over the public etcd v3 API only. `backup` is what the
//! backup CronJob runs (`witan-operator backup`): snapshot, upload, prune.
//! `restore` is what the member pods' init containers run for
//! `spec.bootstrap.restore` (`witan-operator restore-fetch|restore-apply`).
//! `access` is how the operator and backup jobs reach members (TLS client
//! certificate, auth user); `auth` decides the steps that turn etcd
//! authentication on (pure).

pub mod access;
pub mod auth;
pub mod backup;
pub mod controller;
pub mod crd;
pub mod error;
pub mod leader_election;
pub mod members;
pub mod metrics;
pub mod names;
pub mod observed;
pub mod planner;
pub mod quantity;
pub mod resources;
pub mod restore;
pub mod status;
pub mod storage;

pub use crate::error::{Error, Result};
