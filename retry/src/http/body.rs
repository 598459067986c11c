//! Request bodies that can be sent again.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::BoxError;

pin_project! {
    /// A request body that records what it sends, up to a byte cap, so the
    /// request can be sent again.
    ///
    /// The first attempt streams the caller's body through, keeping each
    /// chunk as it goes. A later attempt replays the kept chunks and, if the
    /// first attempt stopped early (the server answered before reading it
    /// all), goes on streaming the rest of the original from where it was
    /// left. Once more than the cap has been sent the chunks are let go and
    /// the request is not retried: memory stays bounded however large the
    /// body. The caller's body is never read twice.
    ///
    /// Made by [`RetryLayer::buffer_bodies`](crate::RetryLayer::buffer_bodies);
    /// the inner service receives `Request<ReplayBody<B>>`.
    pub struct ReplayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        // Sent once and never replayed: no recording at all.
        Once { #[pin] body: B },
        Recorded { reader: Reader<B> },
    }
}

/// What every attempt of one request shares.
struct Tape<B> {
    chunks: Vec<Bytes>,
    recorded: usize,
    cap: usize,
    /// More than `cap` was sent, or the original failed: no replay.
    spoiled: bool,
    /// The original reached its end; everything is in `chunks`.
    ended: bool,
    trailers: Option<HeaderMap>,
    /// The original, while no attempt's body is reading it.
    source: Option<Pin<Box<B>>>,
}

/// One attempt's view of the tape.
struct Reader<B> {
    tape: Arc<Mutex<Tape<B>>>,
    /// The next chunk of the tape this attempt sends.
    cursor: usize,
    /// The original, while this attempt reads it.
    source: Option<Pin<Box<B>>>,
    trailers_sent: bool,
}

fn lock<B>(tape: &Mutex<Tape<B>>) -> MutexGuard<'_, Tape<B>> {
    tape.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> Drop for Reader<B> {
    fn drop(&mut self) {
        // An attempt ended or was abandoned: the rest of the original goes
        // back on the tape for the next one.
        if let Some(source) = self.source.take() {
            lock(&self.tape).source = Some(source);
        }
    }
}

impl<B: Body> ReplayBody<B> {
    /// A body sent once, not recorded.
    pub(crate) const fn once(body: B) -> Self {
        Self {
            kind: Kind::Once { body },
        }
    }

    /// A body recorded up to `cap` bytes; the handle makes replays.
    pub(crate) fn recorded(body: B, cap: usize) -> (Self, Recording<B>) {
        let tape = Arc::new(Mutex::new(Tape {
            chunks: Vec::new(),
            recorded: 0,
            cap,
            spoiled: false,
            ended: false,
            trailers: None,
            source: Some(Box::pin(body)),
        }));
        let recording = Recording { tape: tape.clone() };
        (Self::reading(tape), recording)
    }

    const fn reading(tape: Arc<Mutex<Tape<B>>>) -> Self {
        Self {
            kind: Kind::Recorded {
                reader: Reader {
                    tape,
                    cursor: 0,
                    source: None,
                    trailers_sent: false,
                },
            },
        }
    }
}

/// The handle kept between attempts to make each replay.
pub(crate) struct Recording<B> {
    tape: Arc<Mutex<Tape<B>>>,
}

impl<B: Body> Recording<B> {
    /// Whether no attempt can ever be replayed: more than the cap was sent,
    /// or the original failed.
    pub(crate) fn is_spoiled(&self) -> bool {
        lock(&self.tape).spoiled
    }

    /// A body for another attempt, unless the recording was spoiled or an
    /// earlier attempt still holds the unread rest of the original.
    pub(crate) fn replay(&self) -> Option<ReplayBody<B>> {
        let tape = lock(&self.tape);
        let whole = !tape.spoiled && (tape.ended || tape.source.is_some());
        drop(tape);
        whole.then(|| ReplayBody::reading(self.tape.clone()))
    }
}

impl<B> Drop for Recording<B> {
    fn drop(&mut self) {
        // No attempt comes after the one under way: its body records
        // nothing more, and lets go of the tape once it has sent it.
        lock(&self.tape).spoiled = true;
    }
}

impl<B> std::fmt::Debug for Recording<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").finish_non_exhaustive()
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Once { body } => {
                let frame = ready!(body.poll_frame(cx));
                Poll::Ready(frame.map(|frame| match frame {
                    Ok(frame) => {
                        Ok(frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
                    }
                    Err(error) => Err(error.into()),
                }))
            }
            KindProj::Recorded { reader } => reader.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Once { body } => body.is_end_stream(),
            Kind::Recorded { reader } => {
                let tape = lock(&reader.tape);
                tape.ended
                    && reader.cursor >= tape.chunks.len()
                    && (reader.trailers_sent || tape.trailers.is_none())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Once { body } => body.size_hint(),
            Kind::Recorded { reader } => reader.size_hint(),
        }
    }
}

impl<B> Reader<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        {
            let mut tape = lock(&self.tape);
            if let Some(chunk) = tape.chunks.get(self.cursor) {
                self.cursor += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
            }
            if tape.spoiled && Arc::strong_count(&self.tape) == 1 {
                // Sent, never to be replayed, and no other attempt still
                // reading it: a stream that outlives its retries (a gRPC
                // client stream) holds no copy.
                tape.chunks = Vec::new();
            }
            if tape.ended {
                if !self.trailers_sent {
                    self.trailers_sent = true;
                    if let Some(trailers) = tape.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                return Poll::Ready(None);
            }
            if self.source.is_none() {
                self.source = tape.source.take();
            }
        }
        let Some(source) = self.source.as_mut() else {
            return Poll::Ready(Some(Err(
                "the request body is still held by an earlier attempt".into(),
            )));
        };
        let frame = ready!(source.as_mut().poll_frame(cx));
        let mut tape = lock(&self.tape);
        match frame {
            None => {
                tape.ended = true;
                self.trailers_sent = true;
                Poll::Ready(None)
            }
            Some(Err(error)) => {
                tape.spoiled = true;
                Poll::Ready(Some(Err(error.into())))
            }
            Some(Ok(frame)) => {
                let frame = frame.map_data(|mut data| data.copy_to_bytes(data.remaining()));
                if let Some(data) = frame.data_ref() {
                    if !tape.spoiled {
                        if tape.recorded + data.len() <= tape.cap {
                            tape.recorded += data.len();
                            tape.chunks.push(data.clone());
                            self.cursor += 1;
                        } else {
                            tape.spoiled = true;
                            tape.chunks = Vec::new();
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    tape.trailers = Some(trailers.clone());
                    tape.ended = true;
                    self.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        let tape = lock(&self.tape);
        let kept: usize = tape.chunks.iter().skip(self.cursor).map(Bytes::len).sum();
        let kept = kept as u64;
        if tape.ended {
            return SizeHint::with_exact(kept);
        }
        let rest = self
            .source
            .as_ref()
            .or(tape.source.as_ref())
            .map(|source| source.size_hint())
            .unwrap_or_default();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + kept);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + kept);
        }
        hint
    }
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recorded = matches!(self.kind, Kind::Recorded { .. });
        f.debug_struct("ReplayBody")
            .field("recorded", &recorded)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body of ready frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn body(chunks: &[&'static str], trailers: bool) -> Frames {
        let mut frames: std::collections::VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if trailers {
            let mut map = HeaderMap::new();
            map.insert("grpc-status", "0".parse().unwrap());
            frames.push_back(Frame::trailers(map));
        }
        Frames(frames)
    }

    async fn collect<B: Body<Data = Bytes, Error = BoxError>>(
        body: B,
    ) -> (Bytes, Option<HeaderMap>) {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn a_whole_body_replays_with_its_trailers() {
        let (first, recording) = ReplayBody::recorded(body(&["ab", "cd"], true), 16);
        assert_eq!(first.size_hint().exact(), None);
        let (bytes, trailers) = collect(first).await;
        assert_eq!(bytes, "abcd");
        for _ in 0..2 {
            let again = recording.replay().unwrap();
            assert_eq!(again.size_hint().exact(), Some(4));
            let (bytes, replayed) = collect(again).await;
            assert_eq!(bytes, "abcd");
            assert_eq!(replayed, trailers);
        }
    }

    #[tokio::test]
    async fn a_partly_sent_body_replays_then_streams_the_rest() {
        let (mut first, recording) = ReplayBody::recorded(body(&["ab", "cd", "ef"], false), 16);
        let chunk = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(chunk, "ab");
        assert!(
            recording.replay().is_none(),
            "the first attempt still holds the rest"
        );
        drop(first);
        let (bytes, _) = collect(recording.replay().unwrap()).await;
        assert_eq!(bytes, "abcdef");
        let (bytes, _) = collect(recording.replay().unwrap()).await;
        assert_eq!(bytes, "abcdef", "and again, all from the tape");
    }

    /// Once no attempt can come after it (the retries are over: the
    /// response's head arrived, a request streaming on), the body records
    /// nothing more and lets go of what it kept; it kept up to the cap
    /// for the life of the stream. A replay under way sends its kept
    /// chunks first.
    #[tokio::test]
    async fn a_body_whose_retries_are_over_keeps_no_copy() {
        let (mut first, recording) = ReplayBody::recorded(body(&["ab", "cd", "ef"], false), 16);
        first.frame().await.unwrap().unwrap();
        drop(first);
        let mut replay = recording.replay().unwrap();
        let kept = |body: &ReplayBody<Frames>| match &body.kind {
            Kind::Recorded { reader } => lock(&reader.tape).chunks.len(),
            Kind::Once { .. } => unreachable!("recorded"),
        };
        assert_eq!(kept(&replay), 1);
        drop(recording);
        let chunk = replay.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(chunk, "ab", "the kept chunk first");
        let chunk = replay.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(chunk, "cd");
        assert_eq!(kept(&replay), 0, "nothing kept, nothing more recorded");
        let (rest, _) = collect(replay).await;
        assert_eq!(rest, "ef");
    }

    /// An attempt that reaches its end once the retries are over leaves
    /// the copy alone while another still reads it: the other sent the
    /// trailers and ended, its body cut short.
    #[tokio::test]
    async fn an_attempt_at_its_end_leaves_the_copy_to_another_still_reading() {
        let (first, recording) = ReplayBody::recorded(body(&["ab", "cd", "ef"], true), 16);
        let (whole, trailers) = collect(first).await;
        let (ahead, behind) = (recording.replay().unwrap(), recording.replay().unwrap());
        drop(recording);
        assert_eq!(collect(ahead).await, (whole.clone(), trailers.clone()));
        assert!(!behind.is_end_stream());
        assert_eq!(collect(behind).await, (whole, trailers));
    }

    #[tokio::test]
    async fn over_the_cap_it_streams_on_but_never_replays() {
        let (first, recording) = ReplayBody::recorded(body(&["abcd", "efgh", "ij"], false), 6);
        let (bytes, _) = collect(first).await;
        assert_eq!(bytes, "abcdefghij");
        assert!(recording.replay().is_none());
    }
}
