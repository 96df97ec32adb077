//! The one table from witan's internal errors to etcd's gRPC codes and
//! `etcdserver: ...` messages. Clients (clientv3, Kubernetes) match on the
//! exact text, so the strings are etcd's, byte for byte.

use tonic::{Code, Status};

/// An error a client sees, always one etcd has too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// A `witanpb.Membership/ChangeVoters` request etcd has no error for.
    #[error("witan: {0}")]
    InvalidVoterSet(String),
    /// A storage or internal failure; the text is for the operator's log.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl EtcdError {
    /// The gRPC code etcd uses for this error (`api/v3rpc/rpctypes/error.go`).
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | InvalidSortOption | MemberBadUrls | InvalidVoterSet(_)
            | UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt
            | AuthOldRevision => Code::InvalidArgument,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist
            | NotLeader
            | NotSupportedForLearner
            | MemberExist
            | PeerUrlExist
            | NotEnoughStartedMembers
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | BadLeaderTransferee
            | AuthNotEnabled
            | RootUserNotExist
            | RootRoleNotExist
            | UserAlreadyExist
            | UserNotFound
            | RoleAlreadyExist
            | RoleNotFound
            | RoleNotGranted
            | PermissionNotGranted => Code::FailedPrecondition,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            NoLeader | LeaderChanged | Timeout | Stopped | Unhealthy | LeaderTransferTimeout => {
                Code::Unavailable
            }
            NoSpace => Code::ResourceExhausted,
            Corrupt => Code::DataLoss,
            Internal(_) => Code::Unknown,
        }
    }

    /// A stable number for the error, carried in replicated responses and
    /// forwarded answers so every member reports the same error.
    pub fn to_wire(&self) -> u32 {
        use EtcdError::*;
        match self {
            Compacted => 1,
            FutureRev => 2,
            EmptyKey => 3,
            KeyNotFound => 4,
            ValueProvided => 5,
            LeaseProvided => 6,
            TooManyOps => 7,
            DuplicateKey => 8,
            RequestTooLarge => 9,
            InvalidSortOption => 10,
            LeaseNotFound => 11,
            LeaseExist => 12,
            LeaseTtlTooLarge => 13,
            MemberNotFound => 14,
            NoLeader => 15,
            NotLeader => 16,
            LeaderChanged => 17,
            Timeout => 18,
            Stopped => 19,
            NotSupportedForLearner => 20,
            NoSpace => 21,
            Corrupt => 22,
            // Membership errors travel as gRPC statuses between members;
            // they get numbers all the same so the table stays total.
            MemberExist => 40,
            PeerUrlExist => 41,
            NotEnoughStartedMembers => 42,
            MemberBadUrls => 43,
            MemberNotLearner => 44,
            LearnerNotReady => 45,
            TooManyLearners => 46,
            BadLeaderTransferee => 47,
            Unhealthy => 48,
            LeaderTransferTimeout => 49,
            AuthNotEnabled => 60,
            RootUserNotExist => 61,
            RootRoleNotExist => 62,
            UserAlreadyExist => 63,
            UserEmpty => 64,
            UserNotFound => 65,
            RoleAlreadyExist => 66,
            RoleNotFound => 67,
            RoleEmpty => 68,
            AuthFailed => 69,
            PermissionNotGiven => 70,
            PermissionDenied => 71,
            RoleNotGranted => 72,
            PermissionNotGranted => 73,
            InvalidAuthToken => 74,
            InvalidAuthMgmt => 75,
            AuthOldRevision => 76,
            InvalidVoterSet(_) | Internal(_) => 0,
        }
    }

    /// Inverse of [`EtcdError::to_wire`]; unknown numbers become `Internal`.
    pub fn from_wire(code: u32) -> Self {
        use EtcdError::*;
        match code {
            1 => Compacted,
            2 => FutureRev,
            3 => EmptyKey,
            4 => KeyNotFound,
            5 => ValueProvided,
            6 => LeaseProvided,
            7 => TooManyOps,
            8 => DuplicateKey,
            9 => RequestTooLarge,
            10 => InvalidSortOption,
            11 => LeaseNotFound,
            12 => LeaseExist,
            13 => LeaseTtlTooLarge,
            14 => MemberNotFound,
            15 => NoLeader,
            16 => NotLeader,
            17 => LeaderChanged,
            18 => Timeout,
            19 => Stopped,
            20 => NotSupportedForLearner,
            21 => NoSpace,
            22 => Corrupt,
            40 => MemberExist,
            41 => PeerUrlExist,
            42 => NotEnoughStartedMembers,
            43 => MemberBadUrls,
            44 => MemberNotLearner,
            45 => LearnerNotReady,
            46 => TooManyLearners,
            47 => BadLeaderTransferee,
            48 => Unhealthy,
            49 => LeaderTransferTimeout,
            60 => AuthNotEnabled,
            61 => RootUserNotExist,
            62 => RootRoleNotExist,
            63 => UserAlreadyExist,
            64 => UserEmpty,
            65 => UserNotFound,
            66 => RoleAlreadyExist,
            67 => RoleNotFound,
            68 => RoleEmpty,
            69 => AuthFailed,
            70 => PermissionNotGiven,
            71 => PermissionDenied,
            72 => RoleNotGranted,
            73 => PermissionNotGranted,
            74 => InvalidAuthToken,
            75 => InvalidAuthMgmt,
            76 => AuthOldRevision,
            other => Internal(format!("unknown error code {other}")),
        }
    }
}

impl From<EtcdError> for Status {
    fn from(err: EtcdError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

impl From<crate::storage::StorageError> for EtcdError {
    fn from(err: crate::storage::StorageError) -> Self {
        // Logged where it is handled: here it becomes the client's answer.
        tracing::error!(error = %err, "storage failure");
        EtcdError::Internal(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_round_trip() {
        for code in (1..=22).chain(40..=49).chain(60..=76) {
            assert_eq!(EtcdError::from_wire(code).to_wire(), code);
        }
    }

    #[test]
    fn messages_and_codes_match_etcd() {
        let status: Status = EtcdError::Compacted.into();
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let status: Status = EtcdError::LeaseNotFound.into();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "etcdserver: requested lease not found");
    }

    #[test]
    fn auth_errors_have_etcds_codes() {
        let cases = [
            (EtcdError::PermissionDenied, Code::PermissionDenied),
            (EtcdError::InvalidAuthToken, Code::Unauthenticated),
            (EtcdError::AuthFailed, Code::InvalidArgument),
            (EtcdError::UserEmpty, Code::InvalidArgument),
            (EtcdError::AuthOldRevision, Code::InvalidArgument),
            (EtcdError::RootUserNotExist, Code::FailedPrecondition),
            (EtcdError::UserNotFound, Code::FailedPrecondition),
            (EtcdError::AuthNotEnabled, Code::FailedPrecondition),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err.clone()).code(), code, "{err}");
        }
        assert_eq!(
            EtcdError::RootRoleNotExist.to_string(),
            "etcdserver: root user does not have root role"
        );
    }
}
