//! A response body that tells its call's end, with the trailers that carry
//! the `grpc-status` when the head did not.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// What waits in a [`StatusBody`] for its call's end: a breaker's permit,
/// an error budget's uncounted call. Dropped instead when the body is
/// dropped before its end (a client gone, a timeout above), so its own
/// `Drop` says what an unfinished call counts as.
pub trait AtEnd {
    /// The body ended: `trailers` are its trailers frame, or `None` when it
    /// ended without one, or with an error (for gRPC, a call that failed).
    fn ended(self, trailers: Option<&HeaderMap>);

    /// Told before each poll of the inner body: a drop after it and
    /// before [`polled`](Self::polled) unwinds a panic of the body.
    /// Nothing by default.
    fn polling(&mut self) {}

    /// Told after each poll of the inner body that returned. (A drop
    /// between polls says nothing of the stream: a reader that stopped,
    /// or cancelled while waiting for the next frame, looks to a server
    /// as one cut by a timeout does.) Nothing by default.
    fn polled(&mut self) {}
}

pin_project! {
    /// A response body whose call is settled at its end, when the
    /// trailers (and their `grpc-status`) arrive: the second phase of a
    /// classifier that could not decide from the response's head.
    ///
    /// It tells no end of stream while its call is unsettled: a reader may
    /// stop at an ended body without polling it again (hyper's server
    /// does), and the poll that finds the end is what settles the call.
    #[derive(Debug)]
    pub struct StatusBody<B, W> {
        #[pin]
        inner: B,
        waiting: Option<W>,
    }
}

impl<B, W> StatusBody<B, W> {
    /// `inner`, with `waiting` told at its end (`None`: the head already
    /// settled the call).
    #[must_use]
    pub const fn new(inner: B, waiting: Option<W>) -> Self {
        Self { inner, waiting }
    }
}

impl<B: Default, W> Default for StatusBody<B, W> {
    /// An empty body with nothing waiting (a layer's own answer).
    fn default() -> Self {
        Self::new(B::default(), None)
    }
}

impl<B: Body, W: AtEnd> Body for StatusBody<B, W> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(waiting) = this.waiting.as_mut() {
            waiting.polling();
        }
        let polled = this.inner.poll_frame(cx);
        if let Some(waiting) = this.waiting.as_mut() {
            waiting.polled();
        }
        let frame = ready!(polled);
        if let Some(waiting) = this.waiting.take() {
            match &frame {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => waiting.ended(Some(trailers)),
                    None => *this.waiting = Some(waiting),
                },
                Some(Err(_)) | None => waiting.ended(None),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Writes down what it was told, or that it was dropped untold; the
    /// polls too, when `hooks`.
    struct Told(Arc<Mutex<Vec<String>>>, bool, bool);

    impl AtEnd for Told {
        fn ended(mut self, trailers: Option<&HeaderMap>) {
            self.1 = true;
            let status = trailers.and_then(|t| t.get("grpc-status"));
            self.0.lock().unwrap().push(format!("ended {status:?}"));
        }

        fn polling(&mut self) {
            if self.2 {
                self.0.lock().unwrap().push("polling".into());
            }
        }

        fn polled(&mut self) {
            if self.2 {
                self.0.lock().unwrap().push("polled".into());
            }
        }
    }

    impl Drop for Told {
        fn drop(&mut self) {
            if !self.1 {
                self.0.lock().unwrap().push("dropped".into());
            }
        }
    }

    /// Frames handed out one a poll.
    struct Frames(Vec<Result<Frame<&'static [u8]>, &'static str>>, bool);

    impl Body for Frames {
        type Data = &'static [u8];
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            let frame = (!self.0.is_empty()).then(|| self.0.remove(0));
            Poll::Ready(frame)
        }

        fn is_end_stream(&self) -> bool {
            self.1 && self.0.is_empty()
        }
    }

    fn drain(frames: Vec<Result<Frame<&'static [u8]>, &'static str>>) -> Vec<String> {
        let told = Arc::new(Mutex::new(Vec::new()));
        let mut body =
            StatusBody::new(Frames(frames, true), Some(Told(told.clone(), false, false)));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(Some(_)) = Pin::new(&mut body).poll_frame(&mut cx) {}
        assert!(body.is_end_stream());
        drop(body);
        Arc::try_unwrap(told).unwrap().into_inner().unwrap()
    }

    #[test]
    fn the_call_ends_at_the_trailers_or_at_an_end_without_them() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let data = || Ok(Frame::data(&b"\0\0\0\0\0"[..]));
        assert_eq!(
            drain(vec![data(), Ok(Frame::trailers(trailers))]),
            ["ended Some(\"14\")"]
        );
        assert_eq!(drain(vec![data()]), ["ended None"]);
        assert_eq!(drain(vec![data(), Err("reset")]), ["ended None"]);
    }

    /// A body that waits once, then gives a frame, its trailers and its
    /// end, and panics if polled again.
    struct Slow(u8);

    impl Body for Slow {
        type Data = &'static [u8];
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            self.0 += 1;
            match self.0 {
                1 => Poll::Pending,
                2 => Poll::Ready(Some(Ok(Frame::data(&b"\0"[..])))),
                3 => {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                4 => Poll::Ready(None),
                _ => panic!("the stream failed"),
            }
        }
    }

    #[test]
    fn what_waits_hears_each_poll_until_it_is_told_the_end() {
        let told = Arc::new(Mutex::new(Vec::new()));
        let mut body = StatusBody::new(Slow(0), Some(Told(told.clone(), false, true)));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..4 {
            let _ = Pin::new(&mut body).poll_frame(&mut cx);
        }
        assert_eq!(
            *told.lock().unwrap(),
            [
                "polling",
                "polled",
                "polling",
                "polled",
                "polling",
                "polled",
                "ended Some(\"0\")",
            ],
            "nothing after the end"
        );
    }

    #[test]
    fn a_body_that_panics_drops_what_waits_told_it_was_polling() {
        let told = Arc::new(Mutex::new(Vec::new()));
        let mut body = StatusBody::new(Slow(4), Some(Told(told.clone(), false, true)));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _ = Pin::new(&mut body).poll_frame(&mut cx);
        }));
        assert!(unwound.is_err());
        assert_eq!(*told.lock().unwrap(), ["polling", "dropped"]);
    }

    #[test]
    fn an_unsettled_body_does_not_say_it_ended_and_is_dropped_untold() {
        let told = Arc::new(Mutex::new(Vec::new()));
        let body = StatusBody::new(
            Frames(Vec::new(), true),
            Some(Told(told.clone(), false, false)),
        );
        assert!(!body.is_end_stream(), "the end is still to be polled");
        drop(body);
        assert_eq!(*told.lock().unwrap(), ["dropped"]);
        let settled: StatusBody<Frames, Told> = StatusBody::new(Frames(Vec::new(), true), None);
        assert!(settled.is_end_stream());
    }
}
