//! How the gateway turns a card number into a token before it places an
//! order: payment's [`Vault`] in the same process (the embedded default),
//! or `POST /cards` on the payment process's HTTP address (real
//! infrastructure, [`routes`]): `{"number": "…"}` in, `{"token": "…",
//! "last4": "…"}` out. That address is internal, as its `/metrics` is:
//! keep it off public interfaces.

use std::time::Duration;
use tower::BoxError;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_tracecontext::{
    MIN_PROPAGATED_LEN, Propagate, PropagateLayer, Propagator, TraceContextLayer,
};
use serde::{Deserialize, Serialize};
use tower::{Layer, ServiceExt};

use super::vault::Vault;
use crate::card::{CardNumber, CardToken};

/// How long the gateway waits for payment's answer, the whole exchange.
pub const TOKENIZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of `POST /cards`.
#[derive(Debug, Serialize, Deserialize)]
struct CardRequest {
    number: CardNumber,
}

/// Where the gateway tokenizes card numbers.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// Payment's vault, in this process.
    InProcess(Vault),
    /// The payment process's `POST /cards`.
    Remote(Box<RemoteVault>),
}

impl Tokenizer {
    /// `number`'s token and last four digits.
    ///
    /// # Errors
    ///
    /// The vault's error, or payment unreachable, failing, or slower than
    /// [`TOKENIZE_TIMEOUT`]; no error holds the card number.
    pub async fn tokenize(&self, number: &CardNumber) -> Result<CardToken, BoxError> {
        match self {
            Self::InProcess(vault) => Ok(vault.tokenize(number).await?),
            Self::Remote(remote) => remote.tokenize(number).await,
        }
    }
}

/// A client of the payment process's `POST /cards`.
#[derive(Debug, Clone)]
pub struct RemoteVault {
    url: String,
    /// Each request carries the order's trace, so payment's work for it
    /// is part of the trace.
    client: Propagate<Client<HttpConnector, Full<Bytes>>>,
}

impl RemoteVault {
    /// The client of payment at `base` (`http://host:port`).
    ///
    /// # Errors
    ///
    /// When `base` is not an `http://` URL.
    pub fn new(base: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/');
        let parsed: http::Uri = base
            .parse()
            .map_err(|error| format!("payment's URL {base:?}: {error}"))?;
        if parsed.scheme_str() != Some("http") || parsed.authority().is_none() {
            return Err(format!(
                "payment's URL {base:?}: must be http://HOST:PORT (its --listen address)"
            ));
        }
        Ok(Self {
            url: format!("{base}/cards"),
            client: PropagateLayer::new()
                .layer(Client::builder(TokioExecutor::new()).build(crate::net::http_connector())),
        })
    }

    async fn tokenize(&self, number: &CardNumber) -> Result<CardToken, BoxError> {
        let body = serde_json::to_vec(&CardRequest {
            number: number.clone(),
        })?;
        let request = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let exchange = async {
            let response = self.client.clone().oneshot(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>((status, body))
        };
        let (status, body) = tokio::time::timeout(TOKENIZE_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                format!(
                    "payment at {} did not answer within {TOKENIZE_TIMEOUT:?}",
                    self.url
                )
            })?
            .map_err(|error| format!("payment at {}: {error}", self.url))?;
        if status != StatusCode::OK {
            return Err(format!(
                "payment at {} answered {status}: {}",
                self.url,
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

/// `POST /cards` on payment's HTTP address.
pub fn routes(vault: Vault) -> Router {
    Router::new()
        .route("/cards", post(tokenize))
        .with_state(vault)
        // The gateway's trace continues here, its vendors' state cut as
        // the gateway cuts a client's.
        .layer(
            TraceContextLayer::new()
                .propagator(Propagator::new().tracestate_limit(MIN_PROPAGATED_LEN)),
        )
}

async fn tokenize(State(vault): State<Vault>, body: Bytes) -> Response {
    let problem = |status: StatusCode, error: String| {
        (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
    };
    // The error never quotes the number (see `CardNumber`).
    let request: CardRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return problem(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()),
    };
    match vault.tokenize(&request.number).await {
        Ok(token) => axum::Json(token).into_response(),
        Err(error) => {
            palisade_hints::throttled!(error, %error, "card not tokenized");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the card vault is unavailable; try again".to_owned(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use palisade_tracecontext::{TraceContext, TraceFlags};

    use super::*;

    /// The gateway's call to payment carries the order's trace: payment's
    /// work for an order was a trace of its own.
    #[tokio::test]
    async fn a_tokenization_carries_the_callers_trace() {
        let seen = Arc::new(Mutex::new(None::<String>));
        let payment = {
            let seen = Arc::clone(&seen);
            Router::new().route(
                "/cards",
                post(move |headers: http::HeaderMap| async move {
                    *seen.lock().unwrap() = headers
                        .get("traceparent")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    axum::Json(CardToken {
                        token: "card_0123456789abcdef0123456789abcdef".to_owned(),
                        last4: "4242".to_owned(),
                    })
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, payment).await });

        let vault = RemoteVault::new(&format!("http://{address}")).unwrap();
        let number = CardNumber::parse("4242424242424242").unwrap();
        let trace = TraceContext::new_root(TraceFlags::SAMPLED);
        let token = trace
            .clone()
            .scope(async { vault.tokenize(&number).await })
            .await
            .unwrap();
        assert_eq!(token.last4, "4242");
        let sent = seen.lock().unwrap().clone().expect("a traceparent sent");
        assert!(sent.contains(&trace.trace_id().to_string()), "{sent}");
    }
}
