//! A running member: storage, Raft, the write and read paths, the leader's
//! lease clock, and the servers, wired together.

pub mod auto_compaction;
pub mod committer;
pub mod election;
pub mod join;
pub mod member;
pub mod membership;
pub mod proposer;
mod quota;
pub mod read_barrier;
pub mod reconfig;
pub mod start;
mod tasks;
pub mod transfer;

pub use member::Member;
pub use start::{RunningMember, start};
