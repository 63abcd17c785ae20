//! What the log and the cosigner servers share: a listening socket bound up
//! front (so a bad address fails the start), a runtime on a thread of its own
//! serving an axum router through the bounded accept loop of
//! [`vaultfleet_net::http`] with a per-source request rate, and a stop that
//! gives open connections a second.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::watch;
use vaultfleet_net::http::{BoundedListener, HttpLimits, PeerAddr, RateLimiter};

use crate::ServeError;

/// A running HTTP server. Dropping it stops it.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// How a server is run.
pub(crate) struct Spec {
    /// Its threads' name.
    pub(crate) name: &'static str,
    /// Runtime worker threads.
    pub(crate) workers: usize,
    /// The accept loop's caps.
    pub(crate) limits: HttpLimits,
    /// Requests a second per source, and the burst allowed.
    pub(crate) rate: (u32, u32),
}

/// Binds `listen`: the socket, non-blocking, and the address it got.
pub(crate) fn bind(listen: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), ServeError> {
    let listen_error = |source| ServeError::Listen {
        addr: listen,
        source,
    };
    let listener = std::net::TcpListener::bind(listen).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    Ok((listener, addr))
}

impl HttpServer {
    /// Serves `router` on `listener` (bound by [`bind`] at `addr`), with
    /// `background` running beside it on the same runtime until the stop.
    pub(crate) fn start<B>(
        spec: Spec,
        listener: std::net::TcpListener,
        addr: SocketAddr,
        router: Router,
        background: B,
    ) -> Result<Self, ServeError>
    where
        B: Future<Output = ()> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.workers)
            .thread_name(spec.name)
            .enable_all()
            .build()
            .map_err(|source| ServeError::Runtime { source })?;
        let limiter = Arc::new(RateLimiter::new(spec.rate.0, spec.rate.1));
        let router = router.layer(axum::middleware::from_fn_with_state(limiter, rate_limit));
        let (stop, stopped) = watch::channel(false);
        let (name, limits) = (spec.name, spec.limits);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(runtime, listener, limits, router, background, stopped, name))
            .map_err(|source| ServeError::Runtime { source })?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the server thread. Idempotent.
    pub(crate) fn stop_and_join(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("an HTTP server thread panicked");
            }
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn serve<B: Future<Output = ()> + Send + 'static>(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    limits: HttpLimits,
    router: Router,
    background: B,
    mut stopped: watch::Receiver<bool>,
    name: &'static str,
) {
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{name}: cannot listen: {e}");
                return;
            }
        };
        let background = tokio::spawn(background);
        let bounded = BoundedListener::new(listener, limits);
        let mut on_stop = stopped.clone();
        let server = axum::serve(
            bounded,
            router.into_make_service_with_connect_info::<PeerAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = on_stop.wait_for(|s| *s).await;
        });
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::error!("{name} failed: {e}");
                }
            }
            () = async {
                let _ = stopped.wait_for(|s| *s).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            } => {}
        }
        background.abort();
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
}

/// `429` to a source over its rate.
async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    request: Request,
    next: Next,
) -> Response {
    if !limiter.admit(peer.ip()) {
        return (StatusCode::TOO_MANY_REQUESTS, "slow down\n").into_response();
    }
    next.run(request).await
}
