//! Leases: the leader's clock for expiry. Grants and revokes are replicated
//! through Raft; deadlines are not (as in etcd, a new leader restarts every
//! lease's full TTL).

pub mod lessor;
