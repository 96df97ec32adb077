//! Group commit: concurrent write requests are packed into one Raft entry,
//! so they share one append, one fsync and one replication round. A bounded
//! number of batches are in flight at once (pipelining); while they are,
//! new requests pile up and form the next, larger batch.

use std::sync::Arc;

use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::EtcdError;
use crate::proto::witanpb::{InternalRequest, InternalResponse};

/// Requests in one batch, at most.
pub const MAX_BATCH_REQUESTS: usize = 4096;
/// Encoded bytes in one batch, at most (a single larger request still goes).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches proposed and not yet answered, at most.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// Requests waiting to be batched before callers are made to wait.
const QUEUE_DEPTH: usize = 65_536;

type Reply = oneshot::Sender<Result<InternalResponse, EtcdError>>;

/// Hands requests to the batching loop.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<(InternalRequest, Reply)>,
}

/// Whoever commits a batch: the member, which writes through Raft when it
/// leads and forwards to the leader otherwise.
pub trait BatchSink: Send + Sync + 'static {
    fn commit(
        &self,
        batch: Vec<InternalRequest>,
    ) -> impl std::future::Future<Output = Result<Vec<InternalResponse>, EtcdError>> + Send;
}

impl Proposer {
    /// Starts the batching loop.
    pub fn start<S: BatchSink>(sink: Arc<S>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(batch_loop(sink, rx));
        Proposer { queue }
    }

    /// Proposes one request and waits for its applied response.
    pub async fn propose(&self, request: InternalRequest) -> Result<InternalResponse, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((request, tx))
            .await
            .map_err(|_| EtcdError::Stopped)?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }
}

async fn batch_loop<S: BatchSink>(sink: Arc<S>, mut rx: mpsc::Receiver<(InternalRequest, Reply)>) {
    let in_flight = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot first: requests arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.0.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.0.encoded_len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let sink = sink.clone();
        tokio::spawn(async move {
            let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let count = requests.len();
            match sink.commit(requests).await {
                Ok(responses) if responses.len() == count => {
                    for (reply, response) in replies.into_iter().zip(responses) {
                        let _ = reply.send(Ok(response));
                    }
                }
                Ok(responses) => {
                    tracing::error!(
                        expected = count,
                        got = responses.len(),
                        "batch answered with the wrong number of responses"
                    );
                    for reply in replies {
                        let _ = reply.send(Err(EtcdError::Internal(
                            "batch response count mismatch".into(),
                        )));
                    }
                }
                Err(err) => {
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutRequest;
    use crate::proto::witanpb::internal_request::Request;
    use crate::proto::witanpb::internal_response::Response;
    use std::sync::Mutex;

    /// Records batch sizes and holds every commit until the gate opens.
    struct Recorder {
        sizes: Mutex<Vec<usize>>,
        gate: Semaphore,
    }

    impl BatchSink for Recorder {
        async fn commit(
            &self,
            batch: Vec<InternalRequest>,
        ) -> Result<Vec<InternalResponse>, EtcdError> {
            self.sizes.lock().unwrap().push(batch.len());
            let _pass = self.gate.acquire().await.expect("gate open");
            Ok(batch
                .iter()
                .map(|_| InternalResponse {
                    response: Some(Response::Published(true)),
                })
                .collect())
        }
    }

    fn put() -> InternalRequest {
        InternalRequest {
            request: Some(Request::Put(PutRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_queued_behind_full_pipeline_share_one_batch() {
        let sink = Arc::new(Recorder {
            sizes: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        });
        let proposer = Proposer::start(sink.clone());
        let mut handles = Vec::new();
        // Fill every in-flight slot with a batch of one.
        for n in 1..=MAX_BATCHES_IN_FLIGHT {
            let p = proposer.clone();
            handles.push(tokio::spawn(async move { p.propose(put()).await }));
            wait_for("a held batch", || sink.sizes.lock().unwrap().len() == n).await;
        }
        // These cannot be proposed until a slot frees up.
        let queued = 100;
        for _ in 0..queued {
            let p = proposer.clone();
            handles.push(tokio::spawn(async move { p.propose(put()).await }));
        }
        // The loop holds one request while it waits for a slot.
        wait_for("the queue to fill", || {
            QUEUE_DEPTH - proposer.queue.capacity() == queued - 1
        })
        .await;
        sink.gate.add_permits(1_000);
        for handle in handles {
            assert!(handle.await.unwrap().is_ok());
        }
        let sizes = sink.sizes.lock().unwrap().clone();
        let mut expected = vec![1; MAX_BATCHES_IN_FLIGHT];
        expected.push(queued);
        assert_eq!(sizes, expected);
    }
}
