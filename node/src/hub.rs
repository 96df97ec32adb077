//! What the state machine tells the rest of the member after each applied
//! batch: new events for watchers and the revision now visible.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::proto::mvccpb::Event;

/// One applied batch, as watchers see it.
#[derive(Debug, Default)]
pub struct ApplyNotice {
    /// The store revision after the batch.
    pub revision: i64,
    /// Events in revision order; all events of one revision are in the same
    /// notice.
    pub events: Vec<Event>,
    /// The state was replaced (snapshot install): watchers must re-read
    /// history from storage instead of trusting the stream.
    pub reset: bool,
}

/// Fan-out of applied batches.
#[derive(Clone)]
pub struct ApplyHub {
    notices: broadcast::Sender<Arc<ApplyNotice>>,
    revision: watch::Sender<i64>,
}

/// Notices buffered per subscriber before it must catch up from storage.
const NOTICE_BUFFER: usize = 4096;

impl ApplyHub {
    pub fn new(revision: i64) -> Self {
        let (notices, _) = broadcast::channel(NOTICE_BUFFER);
        let (revision, _) = watch::channel(revision);
        ApplyHub { notices, revision }
    }

    pub fn publish(&self, notice: ApplyNotice) {
        self.revision.send_replace(notice.revision);
        // No subscriber is not an error: nobody is watching.
        let _ = self.notices.send(Arc::new(notice));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ApplyNotice>> {
        self.notices.subscribe()
    }

    pub fn revision(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    pub fn current_revision(&self) -> i64 {
        *self.revision.borrow()
    }
}
