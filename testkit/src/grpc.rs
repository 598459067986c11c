//! A real tonic health server on loopback whose answers a test scripts.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tower::Service;

/// Decides, for the call numbered `n` (from 1), whether the server answers
/// a trailers-only status itself (`Some`) or lets the health service answer.
pub type Answer = Box<dyn FnMut(usize) -> Option<tonic::Status> + Send>;

/// A running health server: its URL and the calls it has seen.
#[derive(Debug, Clone)]
pub struct HealthServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    calls: Arc<AtomicUsize>,
}

impl HealthServer {
    /// Serves `grpc.health.v1` (reporting SERVING) on a fresh port, each
    /// call going through `answer` first. The server runs until the test's
    /// runtime stops.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start(
        answer: impl FnMut(usize) -> Option<tonic::Status> + Send + 'static,
    ) -> Self {
        Self::serve(answer, false).await
    }

    /// As [`start`](Self::start), but a status the script gives comes
    /// after a message, in the trailers (as a server that streamed and then
    /// failed, or a proxy that does not answer trailers-only, sends it).
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start_in_trailers(
        answer: impl FnMut(usize) -> Option<tonic::Status> + Send + 'static,
    ) -> Self {
        Self::serve(answer, true).await
    }

    async fn serve(
        answer: impl FnMut(usize) -> Option<tonic::Status> + Send + 'static,
        in_trailers: bool,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let calls = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(Box::new(answer) as Answer));
        let counted = calls.clone();
        tokio::spawn(
            Server::builder()
                .layer(tower::layer::layer_fn(move |inner| Scripted {
                    inner,
                    script: script.clone(),
                    calls: counted.clone(),
                    in_trailers,
                }))
                .add_service(health)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        Self { url, calls }
    }

    /// Calls the server has seen so far.
    #[must_use]
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Counts each call and answers what the script says.
#[derive(Clone)]
struct Scripted<S> {
    inner: S,
    script: Arc<Mutex<Answer>>,
    calls: Arc<AtomicUsize>,
    /// A scripted status comes in the trailers, after a message.
    in_trailers: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for Scripted<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = (self.script.lock().expect("script lock"))(n);
        match answer {
            Some(status) if self.in_trailers => Box::pin(async move { Ok(in_trailers(&status)) }),
            Some(status) => Box::pin(async move { Ok(status.into_http()) }),
            None => Box::pin(self.inner.call(request)),
        }
    }
}

/// An HTTP 200 whose body is one empty message (a `HealthCheckResponse`
/// of default fields) and then trailers carrying `status`.
fn in_trailers(status: &tonic::Status) -> Response<Body> {
    use http_body_util::BodyExt;

    let (head, _) = status.clone().into_http::<Body>().into_parts();
    let mut trailers = http::HeaderMap::new();
    for (name, value) in &head.headers {
        if name.as_str().starts_with("grpc-") {
            trailers.insert(name, value.clone());
        }
    }
    let body = http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0"))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The `grpc-retry-pushback-ms` a status carries, in milliseconds.
///
/// # Panics
///
/// When it carries none, or not a number.
#[must_use]
pub fn pushback_ms(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("a grpc-retry-pushback-ms")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("milliseconds")
}
