//! End-to-end harness: real `witan` processes driven by the real `etcdctl`.
//!
//! - [`witan_bin`] finds (or builds once) the daemon binary.
//! - [`Cluster`] starts N members on free loopback ports, each with its own
//!   data dir and log file, waits until `etcdctl endpoint health` passes on
//!   all of them, can `kill -9` and restart a member, and kills every child
//!   on drop (also when a test panics).
//! - [`Cluster::ctl`] and friends run `etcdctl` with bounded time and show
//!   the members' logs when an expected success fails.
//! - [`json`] and [`revision_of`] read etcdctl's `-w json` answers;
//!   [`Cluster::wait_applied`] waits until a member has applied a revision.
//! - [`run_witan`] and [`restore_into`] run the offline `witan snapshot`
//!   commands.
//! - [`curl`] fetches a member's HTTP endpoint (plain or https).
//! - [`pki`] makes CAs and certificates (rcgen) for TLS tests;
//!   [`Security`] starts a cluster with https URLs and etcdctl's TLS flags.
//! - [`LineChild`] runs a long-lived process (`etcdctl watch`, a shell) and
//!   hands its stdout over line by line, with deadlines.
//!
//! Every wait in here is a poll against a deadline; nothing sleeps in the
//! hope that something has happened meanwhile.

mod answers;
mod binary;
mod cluster;
mod ctl;
mod curl;
mod offline;
pub mod pki;
mod process;

pub use answers::{json, revision_of};
pub use binary::witan_bin;
pub use cluster::{Cluster, Member, PeerFront, Security, free_ports};
pub use ctl::{CtlOutput, clear_etcdctl_env, etcdctl_bin};
pub use curl::{Reply, curl};
pub use offline::{flag_of, restore_into, run_witan};
pub use process::{LineChild, poll_until, run_bounded};
