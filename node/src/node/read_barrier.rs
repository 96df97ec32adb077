//! Linearizable reads (ReadIndex), coalesced: every read waiting when a
//! round starts shares that round's one leadership check, so a burst of
//! reads costs one heartbeat round, not one each.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::error::EtcdError;

/// Reads waiting for a round, at most, before callers are made to wait.
const QUEUE_DEPTH: usize = 65_536;

/// Obtains a read index and waits until this member has applied it.
pub trait ReadIndexSource: Send + Sync + 'static {
    fn sync_to_read_index(&self)
    -> impl std::future::Future<Output = Result<(), EtcdError>> + Send;
}

#[derive(Clone)]
pub struct ReadBarrier {
    queue: mpsc::Sender<oneshot::Sender<Result<(), EtcdError>>>,
}

impl ReadBarrier {
    pub fn start<S: ReadIndexSource>(source: Arc<S>) -> Self {
        let (queue, mut rx) = mpsc::channel::<oneshot::Sender<Result<(), EtcdError>>>(QUEUE_DEPTH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(next) = rx.try_recv() {
                    waiters.push(next);
                }
                // The round starts after every waiter arrived, so its read
                // index covers every write they could have seen acknowledged.
                let result = source.sync_to_read_index().await;
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        ReadBarrier { queue }
    }

    /// Returns once a read on this member reflects every write acknowledged
    /// before the call.
    pub async fn wait(&self) -> Result<(), EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.queue.send(tx).await.map_err(|_| EtcdError::Stopped)?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }
}
