//! The witness's log in public (`vaultfleet witness serve`).
//!
//! [`LogServer`] serves each namespace of a [`Witness`] as a C2SP tlog-tiles
//! log below `/<namespace>/`: the signed (and cosigned) checkpoint at
//! `checkpoint`, the hash tiles at `tile/<L>/<N>[.p/<W>]` and the entry
//! bundles at `tile/entries/<N>[.p/<W>]`. Tiles are immutable and served as
//! cacheable forever; the checkpoint for a couple of seconds only.
//!
//! Writing is the operator's alone: `POST /submit` takes a
//! [`SignedSubmission`] signed by the pinned operator key. Anything else gets
//! `401` and leaves no trace: nothing enters the log, and nothing is written
//! to the process's log either (an unauthenticated flood cannot fill a disk).
//! An accepted submission is signed under the witness's rules (persisted
//! before it is answered), a new checkpoint is signed, and each configured
//! cosigner is asked for a `cosignature/v1` over it (C2SP tlog-witness
//! `add-checkpoint`, with the consistency proof from the size that cosigner
//! last cosigned). The checkpoint served carries every cosignature that came
//! back; a cosigner that did not answer is asked again every
//! [`LogConfig::cosign_retry`].
//!
//! Every endpoint is bounded: the accept loop of [`vaultfleet_net::http`]
//! (connections in all and per source, a head deadline, a connection
//! lifetime), a per-source request rate, and a body cap per route.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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
use vaultfleet_audit::cosigner::{merge_cosignatures, parse_tlog_size, AddCheckpoint};
use vaultfleet_audit::merkle::MerkleTree;
use vaultfleet_audit::note::{NoteVerifier, SignedNote};
use vaultfleet_audit::submission::{Receipt, SignedSubmission, SubmissionError};
use vaultfleet_audit::tiles::{TilePath, TiledLog};
use vaultfleet_audit::witness::leaf_bytes;
use vaultfleet_audit::{Checkpoint, Witness, WitnessError};
use vaultfleet_net::http::HttpLimits;

use crate::client::{BaseUrl, HttpError};
use crate::server::{bind, HttpServer, Spec};
use crate::{now, ServeError};

/// The listener's caps for the public log.
pub const LOG_LIMITS: HttpLimits = HttpLimits {
    connections: 64,
    per_source: 8,
    overflow: 128,
    overflow_per_source: 16,
    head_timeout: Duration::from_secs(2),
    lifetime: Duration::from_secs(30),
    ok_path: None,
};
/// Requests a second per source, and the burst allowed.
pub const REQUESTS_PER_SECOND: u32 = 50;
/// Burst of requests per source.
pub const REQUESTS_BURST: u32 = 200;
/// The largest body of any request (a submission is a few hundred bytes).
pub const REQUEST_BYTES_MAX: usize = 4096;
/// The largest cosigner answer read.
pub const COSIGNER_ANSWER_BYTES_MAX: usize = 16 * 1024;
/// How long a cosigner has to answer one add-checkpoint.
pub const COSIGNER_TIMEOUT: Duration = Duration::from_secs(5);

/// An independent witness the log asks for cosignatures.
#[derive(Debug, Clone)]
pub struct CosignerEndpoint {
    /// Its submission prefix (`add-checkpoint` is below it).
    pub url: BaseUrl,
    /// Its cosignature key (a `cosignature/v1` verifier): answers are kept
    /// only if they verify under it.
    pub key: NoteVerifier,
}

/// How the log is served.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The operator's Ed25519 key: the only one whose submissions are signed.
    pub operator_key: [u8; 32],
    /// The cosigners asked for each new checkpoint.
    pub cosigners: Vec<CosignerEndpoint>,
    /// Where each cosigned checkpoint is also written (one file per size and
    /// root, never overwritten), if anywhere.
    pub checkpoints_dir: Option<PathBuf>,
    /// How often a checkpoint that lacks a cosigner's cosignature is offered
    /// to it again.
    pub cosign_retry: Duration,
}

impl LogConfig {
    /// A config listening on `listen` for `operator_key`'s submissions, with
    /// no cosigners, no checkpoint files and a 30 s retry.
    pub fn new(listen: SocketAddr, operator_key: [u8; 32]) -> Self {
        Self {
            listen,
            operator_key,
            cosigners: Vec::new(),
            checkpoints_dir: None,
            cosign_retry: Duration::from_secs(30),
        }
    }
}

/// What the server needs of the witness, whatever its HSM.
trait LogWitness: Send {
    fn sign(
        &mut self,
        namespace: &str,
        epoch: u64,
        digest: [u8; 32],
        timestamp: u64,
    ) -> Result<vaultfleet_audit::Witnessed, WitnessError>;
    fn checkpoint(&self, namespace: &str, timestamp: u64) -> Result<SignedNote, WitnessError>;
    fn namespaces(&self) -> Vec<String>;
    fn leaves(&self, namespace: &str) -> Result<Vec<Vec<u8>>, WitnessError>;
    fn tree(&self, namespace: &str) -> MerkleTree;
}

impl<H: Hsm> LogWitness for Witness<H> {
    fn sign(
        &mut self,
        namespace: &str,
        epoch: u64,
        digest: [u8; 32],
        timestamp: u64,
    ) -> Result<vaultfleet_audit::Witnessed, WitnessError> {
        Witness::sign(self, namespace, epoch, digest, timestamp)
    }
    fn checkpoint(&self, namespace: &str, timestamp: u64) -> Result<SignedNote, WitnessError> {
        Witness::checkpoint(self, namespace, timestamp)
    }
    fn namespaces(&self) -> Vec<String> {
        Witness::namespaces(self).map(str::to_string).collect()
    }
    fn leaves(&self, namespace: &str) -> Result<Vec<Vec<u8>>, WitnessError> {
        self.entries(namespace)
            .iter()
            .map(|w| Ok(leaf_bytes(&w.statement, &w.key, &w.signature)?))
            .collect()
    }
    fn tree(&self, namespace: &str) -> MerkleTree {
        Witness::tree(self, namespace).cloned().unwrap_or_default()
    }
}

/// One namespace as published.
struct Published {
    tiles: TiledLog,
    /// The checkpoint note served (the witness's signature and every
    /// cosignature collected for it).
    note: SignedNote,
    size: u64,
    /// Cosigners (by index) whose cosignature the note carries.
    cosigned_by: Vec<usize>,
}

struct Shared {
    witness: Mutex<Box<dyn LogWitness>>,
    published: Mutex<BTreeMap<String, Published>>,
    /// The size each cosigner last cosigned, per (cosigner, namespace).
    cosigner_sizes: Mutex<BTreeMap<(usize, String), u64>>,
    /// One publication at a time, so checkpoints go out in order.
    publishing: tokio::sync::Mutex<()>,
    config: LogConfig,
}

/// A running public log. Dropping it stops it.
pub struct LogServer {
    server: HttpServer,
}

impl LogServer {
    /// Serves `witness`'s namespaces under `config`. Each namespace's
    /// checkpoint is signed and offered to the cosigners at once.
    pub fn start<H: Hsm>(witness: Witness<H>, config: LogConfig) -> Result<Self, ServeError> {
        let (listener, addr) = bind(config.listen)?;
        // R1-7: one entry per cosigner: two sharing a name and key ID could not
        // be told apart in a note.
        for (i, a) in config.cosigners.iter().enumerate() {
            if config.cosigners[..i]
                .iter()
                .any(|b| b.key.name == a.key.name || b.key.key_hash() == a.key.key_hash())
            {
                return Err(ServeError::DuplicateCosigner(a.key.name.clone()));
            }
            if a.key.alg != vaultfleet_audit::note::ALG_COSIGNATURE_V1 {
                return Err(ServeError::NotACosignatureKey(a.key.name.clone()));
            }
        }
        let witness: Box<dyn LogWitness> = Box::new(witness);
        let mut published = BTreeMap::new();
        let time = now();
        for ns in witness.namespaces() {
            let mut tiles = TiledLog::new();
            for leaf in witness.leaves(&ns)? {
                tiles.append(leaf)?;
            }
            let note = witness.checkpoint(&ns, time)?;
            published.insert(
                ns,
                Published {
                    size: tiles.size(),
                    tiles,
                    note,
                    cosigned_by: Vec::new(),
                },
            );
        }
        let shared = Arc::new(Shared {
            witness: Mutex::new(witness),
            published: Mutex::new(published),
            cosigner_sizes: Mutex::new(BTreeMap::new()),
            publishing: tokio::sync::Mutex::new(()),
            config,
        });
        let router = Router::new()
            .route("/submit", post(submit))
            .fallback(read)
            .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
            .with_state(Arc::clone(&shared));
        // Offer every namespace's checkpoint to the cosigners now, then again
        // every `cosign_retry` to those that have not cosigned it.
        let retry = shared.config.cosign_retry;
        let cosigning = async move {
            loop {
                let namespaces: Vec<String> = shared.published.lock().keys().cloned().collect();
                for ns in namespaces {
                    let _turn = shared.publishing.lock().await;
                    cosign_published(&shared, &ns).await;
                }
                tokio::time::sleep(retry).await;
            }
        };
        let spec = Spec {
            name: "tlog-log",
            workers: 2,
            limits: LOG_LIMITS,
            rate: (REQUESTS_PER_SECOND, REQUESTS_BURST),
        };
        let server = HttpServer::start(spec, listener, addr, router, cosigning)?;
        tracing::info!(%addr, "witness log listening");
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

/// GET `/<namespace>/checkpoint` and `/<namespace>/tile/...`.
async fn read(State(shared): State<Arc<Shared>>, method: Method, uri: axum::http::Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "GET only\n").into_response();
    }
    let path = uri.path().trim_start_matches('/');
    if let Some(ns) = path.strip_suffix("/checkpoint") {
        let text = shared.published.lock().get(ns).map(|p| p.note.encode());
        return match text {
            // tlog-tiles: "This endpoint is mutable, so its headers SHOULD
            // prevent caching beyond a few seconds."
            Some(text) => (
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::CACHE_CONTROL, "max-age=2"),
                ],
                text,
            )
                .into_response(),
            None => not_found(),
        };
    }
    let Some(at) = path.rfind("/tile/") else {
        return not_found();
    };
    let (ns, tile) = (&path[..at], &path[at + 1..]);
    let Ok(tile) = TilePath::parse(tile) else {
        return not_found();
    };
    let bytes = {
        let published = shared.published.lock();
        let Some(p) = published.get(ns) else {
            return not_found();
        };
        p.tiles.tile(&tile, p.size)
    };
    match bytes {
        // tlog-tiles: "This endpoint is immutable, so its caching headers
        // SHOULD be long-lived."
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => not_found(),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// POST `/submit`: the operator's signed request to witness an epoch.
async fn submit(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let time = now();
    let signed = match SignedSubmission::decode(&body) {
        Ok(s) => s,
        Err(_) => return unauthorized(),
    };
    match signed.verify(&shared.config.operator_key, time) {
        Ok(()) => {}
        Err(SubmissionError::Stale { sent_at, now }) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the submission was sent at {sent_at}, the witness's time is {now}: check both clocks\n"),
            )
                .into_response()
        }
        Err(_) => return unauthorized(),
    }
    let _turn = shared.publishing.lock().await;
    let s = signed.submission;
    let ns = s.namespace.clone();
    let work = Arc::clone(&shared);
    let signed = tokio::task::spawn_blocking(move || {
        let mut w = work.witness.lock();
        let witnessed = w.sign(&s.namespace, s.epoch, s.digest, time)?;
        let note = w.checkpoint(&s.namespace, time)?;
        let leaf = leaf_bytes(&witnessed.statement, &witnessed.key, &witnessed.signature)?;
        Ok::<_, WitnessError>((witnessed, note, leaf))
    })
    .await;
    let (witnessed, note, leaf) = match signed {
        Ok(Ok(done)) => done,
        Ok(Err(
            e @ (WitnessError::EpochOutOfOrder { .. }
            | WitnessError::EpochSigned { .. }
            | WitnessError::DigestReused { .. }
            | WitnessError::TimeWentBack { .. }
            | WitnessError::InvalidNamespace(_)),
        )) => {
            tracing::info!(namespace = %ns, "submission refused by the witness's rules: {e}");
            return (StatusCode::CONFLICT, format!("{e}\n")).into_response();
        }
        Ok(Err(e)) => {
            tracing::error!(namespace = %ns, "the witness could not sign: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "the witness failed\n").into_response();
        }
        Err(e) => {
            tracing::error!("the witness's signing task failed: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "the witness failed\n").into_response();
        }
    };
    {
        let mut published = shared.published.lock();
        let p = published.entry(ns.clone()).or_insert_with(|| Published {
            tiles: TiledLog::new(),
            note: note.clone(),
            size: 0,
            cosigned_by: Vec::new(),
        });
        if let Err(e) = p.tiles.append(leaf) {
            // Cannot happen for a leaf the witness encoded (a few hundred
            // bytes); the statement is durable in the witness's state and is
            // served after a restart.
            tracing::error!(namespace = %ns, "cannot publish the new leaf: {e}");
        } else {
            p.size = p.tiles.size();
            p.note = note;
            p.cosigned_by.clear();
        }
    }
    tracing::info!(namespace = %ns, epoch = witnessed.statement.epoch, leaf = witnessed.leaf_index, "witnessed");
    cosign_published(&shared, &ns).await;
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Receipt { witnessed }.encode(),
    )
        .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "submissions must be signed by the operator's pinned key\n",
    )
        .into_response()
}

/// Offers `ns`'s published checkpoint to every cosigner that has not cosigned
/// it, and publishes the cosignatures that verify.
async fn cosign_published(shared: &Arc<Shared>, ns: &str) {
    let (note, size, done) = {
        let published = shared.published.lock();
        let Some(p) = published.get(ns) else { return };
        (p.note.clone(), p.size, p.cosigned_by.clone())
    };
    let tree = shared.witness.lock().tree(ns);
    let mut asks = Vec::new();
    for (i, c) in shared.config.cosigners.iter().enumerate() {
        if done.contains(&i) {
            continue;
        }
        let known = shared
            .cosigner_sizes
            .lock()
            .get(&(i, ns.to_string()))
            .copied()
            .unwrap_or(0);
        asks.push(ask_cosigner(
            i,
            c.clone(),
            note.clone(),
            tree.clone(),
            known,
        ));
    }
    let mut merged = note;
    let mut cosigned = done;
    for (i, outcome) in futures_join(asks).await {
        match outcome {
            Ok((answer, size)) => {
                let c = &shared.config.cosigners[i];
                match merge_cosignatures(&merged, &answer, std::slice::from_ref(&c.key)) {
                    Ok((m, added)) if added > 0 => {
                        merged = m;
                        cosigned.push(i);
                        shared
                            .cosigner_sizes
                            .lock()
                            .insert((i, ns.to_string()), size);
                    }
                    Ok(_) => {
                        tracing::warn!(cosigner = %c.url.as_string(), "the cosigner answered without a cosignature from its pinned key")
                    }
                    Err(e) => {
                        tracing::warn!(cosigner = %c.url.as_string(), "the cosigner's answer does not parse: {e}")
                    }
                }
            }
            Err(CosignFailure::Learned(latest)) => {
                shared
                    .cosigner_sizes
                    .lock()
                    .insert((i, ns.to_string()), latest);
            }
            Err(e) => {
                tracing::warn!(cosigner = %shared.config.cosigners[i].url.as_string(), namespace = %ns, "no cosignature: {e}");
            }
        }
    }
    let file = {
        let mut published = shared.published.lock();
        let Some(p) = published.get_mut(ns) else {
            return;
        };
        if p.size != size || p.note.text != merged.text {
            return; // a newer checkpoint was published meanwhile
        }
        p.note = merged.clone();
        p.cosigned_by = cosigned;
        p.note.encode()
    };
    if let Some(dir) = &shared.config.checkpoints_dir {
        if let Err(e) = write_checkpoint(dir, ns, &merged, &file) {
            tracing::warn!("cannot keep the checkpoint file: {e}");
        }
    }
}

/// Joins futures that yield `(index, outcome)`.
async fn futures_join<F, T>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(t) = h.await {
            out.push(t);
        }
    }
    out
}

/// Why a cosigner gave no cosignature.
#[derive(Debug, thiserror::Error)]
enum CosignFailure {
    #[error("{0}")]
    Http(#[from] HttpError),
    #[error("the cosigner knows a larger tree of this log ({latest}) than the log's {size}: investigate (a rollback or a fork of the witness's state)")]
    AheadOfLog { latest: u64, size: u64 },
    #[error("the cosigner's last size is {0}; asking again from it")]
    Learned(u64),
    #[error("status {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("no consistency proof from {from} to {to}")]
    Proof { from: u64, to: u64 },
}

/// One add-checkpoint exchange (and one retry from the size a 409 names).
async fn ask_cosigner(
    index: usize,
    c: CosignerEndpoint,
    note: SignedNote,
    tree: MerkleTree,
    known: u64,
) -> (usize, Result<(String, u64), CosignFailure>) {
    let outcome = async {
        let size = Checkpoint::parse(&note.text)
            .map_err(|_| CosignFailure::Proof { from: known, to: 0 })?
            .size;
        let mut old = known.min(size);
        for _ in 0..2 {
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                tree.consistency_proof(old, size)
                    .map_err(|_| CosignFailure::Proof {
                        from: old,
                        to: size,
                    })?
            };
            let body = AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: note.clone(),
            }
            .encode();
            let answer = c
                .url
                .post(
                    "/add-checkpoint",
                    "text/plain; charset=utf-8",
                    body.into_bytes(),
                    COSIGNER_ANSWER_BYTES_MAX,
                    COSIGNER_TIMEOUT,
                )
                .await?;
            match answer.status {
                200 => return Ok((answer.text().unwrap_or_default().to_string(), size)),
                409 => {
                    let latest = answer
                        .text()
                        .and_then(|t| parse_tlog_size(t).ok())
                        .ok_or_else(|| CosignFailure::Refused {
                            status: 409,
                            body: "a 409 without a tree size".into(),
                        })?;
                    if latest > size {
                        return Err(CosignFailure::AheadOfLog { latest, size });
                    }
                    old = latest;
                }
                status => {
                    let body: String = answer
                        .text()
                        .unwrap_or("(not text)")
                        .chars()
                        .take(200)
                        .collect();
                    return Err(CosignFailure::Refused { status, body });
                }
            }
        }
        Err(CosignFailure::Learned(old))
    }
    .await;
    (index, outcome)
}

/// Writes a cosigned checkpoint beside the witness's others: named by
/// namespace, size and root, never overwritten (a second root for one size is
/// evidence of a fork and must stay), rewritten only as it gains cosignatures.
fn write_checkpoint(
    dir: &std::path::Path,
    ns: &str,
    note: &SignedNote,
    text: &str,
) -> std::io::Result<()> {
    let cp = Checkpoint::parse(&note.text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let root: String = cp.root.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let name = format!("{}-{:012}-{root}.txt", ns.replace('/', "_"), cp.size);
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let tmp = path.with_extension("txt.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)
}
