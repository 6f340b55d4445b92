//! Coalesces an HTTP/2 connection's writes into one TLS record and one
//! `writev` per burst.
//!
//! hyper writes a unary gRPC call in two flushes on each side: a client sends
//! the request's HEADERS before the stream is open for its DATA, and a server
//! sends HEADERS and DATA before the task that produces the trailers has run.
//! Each flush is a TLS record, a syscall and, over loopback, the receiver's
//! network softirq and a wakeup, so a search fanned out to nine cities paid
//! for about eighteen of them that carried nothing the peer could act on.
//!
//! [`Coalesce`] buffers what is written and, at the first flush of a burst,
//! yields once before writing: every task the connection's progress has just
//! woken (the request's body, the response's trailers) runs first and adds
//! its frames, and the second flush sends them all together. The yield is a
//! reschedule behind the tasks already runnable, not a timer, so nothing waits
//! on a clock, and an idle process writes at once.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes beyond which a write goes out without waiting for a flush,
/// so a large response streams rather than piling up in memory.
const MAX_BUFFERED: usize = 64 * 1024;

/// An I/O stream whose writes are buffered until a flush, and whose flushes
/// are deferred by one scheduling round (see the module docs).
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed to `inner`.
    sent: usize,
    /// Whether this burst's flush has already yielded once.
    yielded: bool,
    /// Bytes already read from `inner` that the reader has not seen yet.
    unread: Vec<u8>,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Self::with_unread(inner, Vec::new())
    }

    /// Like [`Coalesce::new`], with `unread` served to the first reads
    /// before anything from `inner`.
    pub fn with_unread(inner: T, unread: Vec<u8>) -> Self {
        Coalesce { inner, buf: Vec::new(), sent: 0, yielded: false, unread }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Hands everything buffered to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes; `false` when they are too many to
    /// buffer at all and should go straight through.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.buf.len() + len > MAX_BUFFERED {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len <= MAX_BUFFERED))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if !ready!(self.poll_room(cx, data.len()))? {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if !ready!(self.poll_room(cx, len))? {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.sent < self.buf.len() {
            if !self.yielded {
                // Let the tasks this connection just woke add their frames.
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.poll_drain(cx))?;
        }
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesce<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn writes_reach_the_peer_at_the_flush_in_order_and_whole() {
        let (a, mut b) = duplex(1 << 20);
        let mut w = Coalesce::new(a);
        w.write_all(b"headers|").await.unwrap();
        w.write_all(b"data|").await.unwrap();
        // Nothing is written before the flush.
        let mut probe = [0u8; 1];
        assert!(futures_util::FutureExt::now_or_never(b.read(&mut probe)).is_none());
        w.flush().await.unwrap();
        let mut got = vec![0u8; 13];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"headers|data|");
    }

    #[tokio::test]
    async fn more_than_the_buffer_holds_streams_through_a_small_pipe() {
        // The pipe holds far less than is written, so writes must drain as
        // the reader reads rather than wait for a flush.
        let (a, mut b) = duplex(4096);
        let data: Vec<u8> = (0..(3 * MAX_BUFFERED + 123)).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut w = Coalesce::new(a);
        for chunk in data.chunks(10_000) {
            w.write_all(chunk).await.unwrap();
        }
        w.write_all(&[7u8; 3 * MAX_BUFFERED]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), expect.len() + 3 * MAX_BUFFERED);
        assert_eq!(&got[..expect.len()], &expect[..]);
        assert!(got[expect.len()..].iter().all(|&x| x == 7));
    }
}
