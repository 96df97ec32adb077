//! What a checker reports.

use serde::{Deserialize, Serialize};

/// Which promise was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Per-key linearizability search found no legal order.
    Linearizability,
    /// The search ran out of budget (counted as a failure, like etcd).
    Undecided,
    /// Revisions, responses or real-time order disagree with the model.
    Revision,
    /// An acknowledged write is not in the final history.
    LostWrite,
    Watch,
    /// Members disagree with each other or with the replay at the end.
    FinalState,
    /// Members' HashKV at the final revision did not agree in time.
    Hash,
}

/// One broken promise, with the operations (history op ids) and watches
/// (watch ids) that show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub kind: Kind,
    pub message: String,
    pub ops: Vec<usize>,
    pub watches: Vec<usize>,
}

impl Violation {
    pub fn new(kind: Kind, message: impl Into<String>, ops: Vec<usize>) -> Violation {
        Violation {
            kind,
            message: message.into(),
            ops,
            watches: Vec::new(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{:?}] {}", self.kind, self.message)?;
        if !self.ops.is_empty() {
            write!(f, " (ops {:?})", self.ops)?;
        }
        if !self.watches.is_empty() {
            write!(f, " (watches {:?})", self.watches)?;
        }
        Ok(())
    }
}
