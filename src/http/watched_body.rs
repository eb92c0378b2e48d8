//! A request body that records when reading it has ended, so that the request timeout can
//! distinguish a client that stopped sending from a handler that is still working.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Wraps a body and sets a shared flag once the body has no more frames or fails.
    pub struct WatchedBody<B> {
        #[pin]
        inner: B,
        ended: Arc<AtomicBool>,
    }
}

impl<B: Body> WatchedBody<B> {
    /// Wraps `inner` and returns the flag, already set for a body that is empty.
    pub fn new(inner: B) -> (Self, Arc<AtomicBool>) {
        let ended = Arc::new(AtomicBool::new(inner.is_end_stream()));
        let body = Self {
            inner,
            ended: ended.clone(),
        };
        (body, ended)
    }
}

impl<B: Body> Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let failed = matches!(frame, Some(Err(_)));
        if frame.is_none() || failed || this.inner.is_end_stream() {
            this.ended.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
