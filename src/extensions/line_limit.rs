//! A size limit on the messages a stdio server writes to stdout, one JSON-RPC message per
//! line. rmcp 3.11 drops a line over its own limit and keeps reading, so the call waiting
//! for that line hangs until its timeout. This reader fails the connection instead.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Maximum bytes of one message from a stdio server, without its newline. 16 MiB is rmcp
/// 3.11's default line limit and the maximum SSE event size of its streamable HTTP client.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The error of a connection whose server sent a message over the limit, shared between
/// the reader, the connection and the tool calls of one extension.
#[derive(Debug, Clone, Default)]
pub struct Overflow(Arc<Mutex<Option<String>>>);

impl Overflow {
    /// Returns the error, if the current connection failed on an oversized message.
    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the error of an earlier connection.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn set(&self, message: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
    }
}

pin_project_lite::pin_project! {
    /// Reads a server's stdout and fails with `InvalidData` once a line exceeds `limit`
    /// bytes. The full error goes into `overflow`.
    #[derive(Debug)]
    pub struct LimitedLines<R> {
        #[pin]
        inner: R,
        extension: String,
        limit: usize,
        line_len: usize,
        overflow: Overflow,
        failed: bool,
    }
}

impl<R> LimitedLines<R> {
    /// Wraps `inner`, the stdout of `extension`'s server.
    pub fn new(inner: R, extension: &str, limit: usize, overflow: Overflow) -> Self {
        Self {
            inner,
            extension: extension.to_owned(),
            limit,
            line_len: 0,
            overflow,
            failed: false,
        }
    }
}

/// Returns the length of the line in progress after `bytes`, which follow `line_len`
/// bytes of it, or `None` when any line grows past `limit`.
fn line_len_after(mut line_len: usize, bytes: &[u8], limit: usize) -> Option<usize> {
    let mut segments = bytes.split(|byte| *byte == b'\n').peekable();
    while let Some(segment) = segments.next() {
        line_len += segment.len();
        if line_len > limit {
            return None;
        }
        if segments.peek().is_some() {
            line_len = 0;
        }
    }
    Some(line_len)
}

impl<R: AsyncRead> AsyncRead for LimitedLines<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::InvalidData)));
        }
        let before = buf.filled().len();
        let result = std::task::ready!(this.inner.poll_read(cx, buf));
        if let Some(line_len) = line_len_after(*this.line_len, &buf.filled()[before..], *this.limit)
        {
            *this.line_len = line_len;
            return Poll::Ready(result);
        }
        *this.failed = true;
        let message = format!(
            "extension {} sent a message larger than the limit of {} bytes ({} MiB) for one \
             stdio message, so its connection was closed and the server is restarted; make \
             the tool return less data",
            this.extension,
            this.limit,
            *this.limit / (1024 * 1024)
        );
        // The supervisor logs `message` when it marks the extension failed, and rmcp logs
        // this short error, so the limit is logged once.
        this.overflow.set(message);
        let error = io::Error::new(io::ErrorKind::InvalidData, "a message over the size limit");
        Poll::Ready(Err(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_length_carries_across_reads() {
        assert_eq!(line_len_after(0, b"abc", 4), Some(3));
        assert_eq!(line_len_after(3, b"d", 4), Some(4));
        assert_eq!(line_len_after(4, b"e", 4), None);
        assert_eq!(line_len_after(4, b"\nab", 4), Some(2));
        assert_eq!(line_len_after(0, b"abcd\nabcd\n", 4), Some(0));
        assert_eq!(line_len_after(0, b"ab\nabcde\nab", 4), None);
    }
}
