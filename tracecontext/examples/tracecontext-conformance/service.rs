//! The service under test, built from the crate's layers only: the server
//! side continues the harness's trace, the client side carries it to every
//! callback as a new child span.

use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_tracecontext::{Propagate, PropagateLayer, TraceContextLayer};
use serde::Deserialize;
use tower::{ServiceBuilder, ServiceExt};

/// The HTTP client every callback goes through.
type Callbacks = Propagate<Client<HttpConnector, Full<Bytes>>>;

/// One element of the harness's request: where to call back, and with what.
#[derive(Debug, Deserialize)]
struct Callback {
    url: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

/// The conformance service: `POST /` or `POST /test` with a JSON array of
/// callbacks, answered once every callback is done.
pub(crate) fn router() -> Router {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let callbacks = ServiceBuilder::new()
        .layer(PropagateLayer::new())
        .service(client);
    Router::new()
        .route("/", post(handle))
        .route("/test", post(handle))
        .with_state(callbacks)
        .layer(TraceContextLayer::new())
}

async fn handle(
    State(client): State<Callbacks>,
    Json(callbacks): Json<Vec<Callback>>,
) -> StatusCode {
    for callback in callbacks {
        let body = serde_json::to_vec(&callback.arguments).unwrap_or_default();
        let request = match Request::post(&callback.url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
        {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(url = %callback.url, %err, "callback URL refused");
                continue;
            }
        };
        if let Err(err) = client.clone().oneshot(request).await {
            tracing::warn!(url = %callback.url, %err, "callback failed");
        }
    }
    StatusCode::OK
}
