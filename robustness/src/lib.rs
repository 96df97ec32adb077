//! witan's robustness suite: real `witan` processes under client traffic
//! and one fault per run, with every request and watch event recorded and
//! then checked against an etcd model (docs/robustness.md).
//!
//! - [`history`]: what was recorded; [`traffic`] records it.
//! - [`model`]: the etcd store with revisions, replayed in revision order.
//! - [`linearizability`]: per-key porcupine-style search; [`revisions`]:
//!   global revision order, answers and real time; [`watch`]: the watch
//!   guarantees; [`checker`] runs them all.
//! - [`nemesis`]: the faults; [`scenario`]: one run, seeded and replayable;
//!   [`report`]: the folder written on a violation.
//!
//! The checkers are pure functions of a [`history::History`]; only
//! `traffic`, `nemesis` and `scenario` do I/O. Nothing here may depend on
//! witan's own crates: the suite sees witan only through its etcd API and
//! its processes.

pub mod checker;
pub mod history;
pub mod linearizability;
pub mod model;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod revisions;
pub mod scenario;
pub mod traffic;
pub mod violation;
pub mod watch;

#[cfg(test)]
mod checker_tests;
