//! `vaultfleet cosigner serve`: an independent witness speaking C2SP
//! tlog-witness over HTTP.
//!
//! `POST /add-checkpoint` hands the body to a
//! [`Cosigner`], which verifies the
//! log's signature and the consistency proof, persists the new size before it
//! cosigns, and refuses to go back or fork, with the status codes the spec
//! fixes. `GET /<origin hash>/checkpoint` serves the latest checkpoint it
//! cosigned for a log (the spec's monitoring endpoint). Requests are served
//! one at a time against the cosigner's state, so the check and the persist
//! are atomic, as the spec requires.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use vaultfleet::hsm::Hsm;
use vaultfleet_audit::cosigner::{Cosigner, ADD_CHECKPOINT_BYTES_MAX};
use vaultfleet_net::http::HttpLimits;

use crate::server::{bind, HttpServer, Spec};
use crate::{now, ServeError};

/// The listener's caps for a cosigner.
pub const COSIGNER_LIMITS: HttpLimits = HttpLimits {
    connections: 32,
    per_source: 8,
    overflow: 64,
    overflow_per_source: 16,
    head_timeout: Duration::from_secs(2),
    lifetime: Duration::from_secs(30),
    ok_path: None,
};
/// Requests a second per source.
pub const REQUESTS_PER_SECOND: u32 = 20;
/// Burst of requests per source.
pub const REQUESTS_BURST: u32 = 50;

struct Shared<H: Hsm> {
    cosigner: Mutex<Cosigner<H>>,
}

/// A running cosigner. Dropping it stops it.
pub struct CosignerServer {
    server: HttpServer,
}

impl CosignerServer {
    /// Serves `cosigner` on `listen`.
    pub fn start<H: Hsm>(cosigner: Cosigner<H>, listen: SocketAddr) -> Result<Self, ServeError> {
        let (listener, addr) = bind(listen)?;
        let shared = Arc::new(Shared {
            cosigner: Mutex::new(cosigner),
        });
        let router = Router::new()
            .route("/add-checkpoint", post(add_checkpoint::<H>))
            .fallback(monitor::<H>)
            .layer(DefaultBodyLimit::max(ADD_CHECKPOINT_BYTES_MAX))
            .with_state(shared);
        let spec = Spec {
            name: "tlog-cosigner",
            workers: 1,
            limits: COSIGNER_LIMITS,
            rate: (REQUESTS_PER_SECOND, REQUESTS_BURST),
        };
        let server = HttpServer::start(spec, listener, addr, router, std::future::pending())?;
        tracing::info!(%addr, "cosigner listening");
        Ok(Self { server })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops serving and waits for the server thread.
    pub fn shutdown(mut self) {
        self.server.stop_and_join();
    }
}

async fn add_checkpoint<H: Hsm>(State(shared): State<Arc<Shared<H>>>, body: Bytes) -> Response {
    let time = now();
    let outcome =
        tokio::task::spawn_blocking(move || shared.cosigner.lock().add_checkpoint(&body, time))
            .await;
    match outcome {
        Ok(Ok(lines)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            lines,
        )
            .into_response(),
        Ok(Err(refusal)) => {
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status.is_server_error() {
                tracing::error!("cosigner: {refusal}");
            } else {
                tracing::debug!("cosigner refused a checkpoint: {refusal}");
            }
            let (content_type, body) = refusal.body();
            (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(e) => {
            tracing::error!("cosigner task failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "the cosigner failed\n").into_response()
        }
    }
}

/// GET `/<origin hash>/checkpoint`.
async fn monitor<H: Hsm>(
    State(shared): State<Arc<Shared<H>>>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "GET only\n").into_response();
    }
    let hash = uri
        .path()
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/checkpoint"));
    let note = hash.and_then(|h| shared.cosigner.lock().checkpoint_for(h));
    match note {
        Some(text) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "max-age=2"),
            ],
            text,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}
