//! The space quota on the write path and the member's view of the alarms,
//! as etcd's `quotaKVServer` and alarm store do it.

use crate::error::EtcdError;
use crate::mvcc::alarm::{self, ActiveAlarms};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{AlarmRequest, AlarmType};
use crate::proto::witanpb::InternalRequest;
use crate::proto::witanpb::internal_request::Request;
use crate::storage::{ALARMS, inline};

use super::Member;
use super::member::storage_err;

impl Member {
    /// Refuses a request that would grow a database already at its quota.
    /// Like etcd, the member first raises a NOSPACE alarm for itself
    /// through Raft (so every member stops taking writes), then answers
    /// "database space exceeded" whether or not raising it worked.
    pub(crate) async fn check_quota(&self, request: &InternalRequest) -> Result<(), EtcdError> {
        let cost_bytes = alarm::quota_cost_bytes(request);
        if cost_bytes == 0 {
            return Ok(());
        }
        let quota_bytes = self.config.quota_backend_bytes;
        let db_size_bytes = self.store.file_size_bytes();
        if !alarm::quota_exceeded(db_size_bytes, cost_bytes, quota_bytes) {
            return Ok(());
        }
        tracing::warn!(
            db_size_bytes,
            cost_bytes,
            quota_bytes = quota_bytes.unwrap_or(0),
            "database space exceeded; raising NOSPACE"
        );
        let raise = InternalRequest {
            request: Some(Request::Alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.id,
                alarm: AlarmType::Nospace as i32,
            })),
            ..Default::default()
        };
        if let Err(e) = self.proposer.propose(raise).await {
            tracing::error!(error = %e, "raising the NOSPACE alarm failed");
        }
        Err(EtcdError::NoSpace)
    }

    /// The alarms in this member's applied state.
    pub fn alarms(&self) -> Result<ActiveAlarms, EtcdError> {
        inline(|| {
            let txn = self.store.db().begin_read().map_err(storage_err)?;
            let table = txn.open_table(ALARMS).map_err(storage_err)?;
            Ok(ActiveAlarms::load(&table)?)
        })
    }
}
