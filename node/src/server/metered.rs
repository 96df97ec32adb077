//! A tower layer on the client port that feeds go-grpc-prometheus' server
//! metrics ([`crate::metrics::grpc`]) from the HTTP/2 exchange itself, so
//! every gRPC service is measured the same way without touching handlers.
//!
//! A call is started when its request arrives and handled when its status is
//! known: in the response headers for a trailers-only answer (how tonic
//! sends an error returned before any message), else in the trailers at the
//! end of the response body. A call whose response is dropped before that
//! (the client went away) is handled as `Canceled`. Messages are counted
//! from the length-prefixed frames in the request and response bodies, so
//! every message of a stream counts. Paths that are not served gRPC methods
//! (the HTTP endpoints, the gateway) pass through untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::IntCounter;
use tonic::Code;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::grpc::{FrameCounter, GrpcMetrics, MethodMetrics, parse_grpc_status};

const GRPC_STATUS: &str = "grpc-status";

/// Wraps the client port's service in [`Metered`].
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<GrpcMetrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<GrpcMetrics>) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The metering service; see the module docs.
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, ResBody> Service<Request<Body>> for Metered<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Future: Unpin,
    ResBody: HttpBody<Data = Bytes> + Unpin,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(method) = self.metrics.method(request.uri().path()).cloned() else {
            return MeteredFuture {
                inner: self.inner.call(request),
                meter: None,
            };
        };
        method.started.inc();
        let received = method.msg_received.clone();
        let request = request.map(|body| {
            Body::new(CountingBody {
                inner: body,
                frames: FrameCounter::default(),
                messages: received,
            })
        });
        MeteredFuture {
            inner: self.inner.call(request),
            meter: Some(Meter {
                method,
                started: Instant::now(),
                finished: false,
            }),
        }
    }
}

/// One call in flight: records it as handled exactly once, when its code is
/// known or, if it never is, as `Canceled` when dropped.
struct Meter {
    method: Arc<MethodMetrics>,
    started: Instant,
    finished: bool,
}

impl Meter {
    fn finish(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.method.handled(code).inc();
        self.method
            .handling_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }

    /// Finishes with the code in `headers` (response headers or trailers),
    /// if they carry one.
    fn finish_from(&mut self, headers: &HeaderMap) -> bool {
        match headers.get(GRPC_STATUS) {
            Some(value) => {
                self.finish(parse_grpc_status(value.as_bytes()));
                true
            }
            None => false,
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The inner service's future, then the response with its body metered.
pub struct MeteredFuture<F> {
    inner: F,
    meter: Option<Meter>,
}

impl<F, ResBody, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>> + Unpin,
    ResBody: HttpBody<Data = Bytes> + Unpin,
{
    type Output = Result<Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = match Pin::new(&mut this.inner).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(response)) => response,
        };
        let mut meter = this.meter.take();
        if let Some(m) = meter.as_mut() {
            if !response.status().is_success() {
                // Not a gRPC answer at all (tonic answers gRPC with 200).
                m.finish(Code::Unknown);
            } else {
                // Trailers-only answers carry the status here already.
                m.finish_from(response.headers());
            }
        }
        let meter = meter.filter(|m| !m.finished);
        Poll::Ready(Ok(response.map(|inner| MeteredBody {
            sent: meter
                .as_ref()
                .map(|m| (FrameCounter::default(), m.method.msg_sent.clone())),
            meter,
            inner,
        })))
    }
}

/// A response body that counts the messages sent and finishes its call at
/// the trailers.
pub struct MeteredBody<B> {
    inner: B,
    meter: Option<Meter>,
    sent: Option<(FrameCounter, IntCounter)>,
}

impl<B> HttpBody for MeteredBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((frames, sent))) = (frame.data_ref(), &mut this.sent) {
                    let n = frames.feed(data);
                    if n > 0 {
                        sent.inc_by(n);
                    }
                } else if let (Some(trailers), Some(meter)) =
                    (frame.trailers_ref(), &mut this.meter)
                    && !meter.finish_from(trailers)
                {
                    meter.finish(Code::Unknown);
                }
            }
            // A body that fails or ends without a status is not a gRPC
            // answer a client can read.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                if let Some(meter) = &mut this.meter {
                    meter.finish(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that counts the messages received.
struct CountingBody {
    inner: Body,
    frames: FrameCounter,
    messages: IntCounter,
}

impl HttpBody for CountingBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = this.frames.feed(data);
            if n > 0 {
                this.messages.inc_by(n);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
