//! Coalesces a client connection's writes into fewer syscalls.
//!
//! hyper serves each HTTP/2 request in its own task, and the connection's
//! task writes whatever frames are queued the moment it is woken. A unary
//! gRPC answer is three frames (HEADERS, DATA, trailing HEADERS) queued one
//! after the other by the request's task, which runs on the other worker
//! thread: the connection's task, woken by the first, often wrote the
//! HEADERS alone and the rest in a second `writev` (2.2 writes per answer,
//! measured with `strace -c` during `range_ser_64`), and each write over
//! TCP costs the sender and wakes the receiver.
//!
//! [`BatchedWrites`] keeps what the connection writes until it flushes, and
//! the first time a flush finds less than [`SMALL_BATCH_BYTES`] waiting it
//! yields once to the scheduler before writing, so the frames other tasks
//! are about to queue go out in the same write. grpc-go's writer (what
//! etcd serves with) does the same: `loopyWriter` yields once
//! (`runtime.Gosched`) before flushing a batch under 1,000 bytes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A flush of fewer bytes than this waits for one turn of the scheduler.
pub const SMALL_BATCH_BYTES: usize = 1000;
/// Bytes kept before a write goes out without waiting for a flush.
const MAX_BUFFERED_BYTES: usize = 64 * 1024;

/// A connection whose writes are held until a flush; see the module docs.
pub struct BatchedWrites<S> {
    inner: S,
    buffered: Vec<u8>,
    /// How much of `buffered` the socket has taken.
    written: usize,
    /// This flush has already yielded once.
    yielded: bool,
}

impl<S> BatchedWrites<S> {
    pub fn new(inner: S) -> Self {
        BatchedWrites {
            inner,
            buffered: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> BatchedWrites<S> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffered.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffered[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffered.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room before more bytes are held.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buffered.len() >= MAX_BUFFERED_BYTES {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx))?;
        this.buffered.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx))?;
        let mut n = 0;
        for buf in bufs {
            this.buffered.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waiting = this.buffered.len() - this.written;
        if waiting > 0 && waiting < SMALL_BATCH_BYTES && !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BatchedWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: Connected> Connected for BatchedWrites<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;

    /// Records each write the socket is given.
    #[derive(Clone, Default)]
    struct Socket {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn writes(socket: &Socket) -> Vec<Vec<u8>> {
        socket.writes.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn writes_are_held_until_a_flush_and_go_out_as_one() {
        let socket = Socket::default();
        let mut conn = BatchedWrites::new(socket.clone());
        conn.write_all(b"headers").await.unwrap();
        let n = conn
            .write_vectored(&[IoSlice::new(b"data"), IoSlice::new(b"trailers")])
            .await
            .unwrap();
        assert_eq!(n, 12, "every slice is taken");
        assert!(
            writes(&socket).is_empty(),
            "nothing goes out before a flush"
        );
        conn.flush().await.unwrap();
        assert_eq!(writes(&socket), [b"headersdatatrailers".to_vec()]);
    }

    #[tokio::test]
    async fn a_small_flush_yields_once_so_frames_queued_meanwhile_join_it() {
        let socket = Socket::default();
        let mut conn = BatchedWrites::new(socket.clone());
        conn.write_all(b"headers").await.unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_pending());
        assert!(writes(&socket).is_empty());
        // Another task queues the rest of the answer meanwhile.
        conn.write_all(b"data").await.unwrap();
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
        assert_eq!(writes(&socket), [b"headersdata".to_vec()]);
        // The next small flush yields again.
        conn.write_all(b"more").await.unwrap();
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn a_large_batch_and_a_shutdown_go_out_at_once() {
        let socket = Socket::default();
        let mut conn = BatchedWrites::new(socket.clone());
        let big = vec![7u8; SMALL_BATCH_BYTES];
        conn.write_all(&big).await.unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
        assert_eq!(writes(&socket), [big]);
        conn.write_all(b"bye").await.unwrap();
        conn.shutdown().await.unwrap();
        assert_eq!(writes(&socket).last().unwrap(), b"bye");
    }

    #[tokio::test]
    async fn a_socket_that_takes_nothing_is_an_error() {
        struct Full;
        impl AsyncWrite for Full {
            fn poll_write(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                _buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(0))
            }
            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut conn = BatchedWrites::new(Full);
        conn.write_all(&[1; SMALL_BATCH_BYTES]).await.unwrap();
        let err = conn.flush().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
    }
}
