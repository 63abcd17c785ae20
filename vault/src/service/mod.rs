//! The vault service: [`ServiceCore`], the sans-IO core of what a service does
//! with each client request, and [`VaultService`], which drives it beside a node
//! of the threaded runtime, proposing each step through consensus with a runtime
//! [`Client`] session and signing every reply with its replica's response key.
//! The simulator drives the same core over simulated consensus.

mod core;
mod logins;
pub mod telemetry;
#[cfg(test)]
mod tests;

pub use self::core::{Call, FleetStep, LoginLimits, NotCommitted, Progress, ServiceCore};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bundle_source::BundleSource;
use crate::error::Unreachable;
use vaultfleet::hsm::Hsm;
use vaultfleet::runtime::{Client, ClientConfig, ClientError};
use vaultfleet::{NodeHandle, ReplicaId};

/// Something a [`VaultClient`](super::VaultClient) can send requests to: a
/// [`VaultService`] in process, or a network stub in front of one.
pub trait VaultEndpoint: Send + Sync {
    /// The replica that answers.
    fn replica(&self) -> ReplicaId;
    /// Sends one encoded `VaultClientRequest`; returns the encoded, signed
    /// `VaultReply`.
    fn call(&self, request: &[u8]) -> Result<Vec<u8>, Unreachable>;
}

/// Limits of a [`VaultService`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaultServiceConfig {
    /// Logins kept at most between their start and their finish (or a
    /// re-registration's upload). Beyond it a new login is refused *before* its
    /// attempt is spent; no login is ever evicted to make room.
    pub logins_max: usize,
    /// Logins of one user kept at most (refused beyond it, before spending).
    pub logins_per_user_max: usize,
    /// How long a login may await its finalization (and how long a concluded
    /// finish's answer is kept for a repeat of it).
    pub login_ttl: Duration,
    /// The runtime client session the service proposes through.
    pub client: ClientConfig,
}

impl Default for VaultServiceConfig {
    fn default() -> Self {
        let limits = LoginLimits::default();
        Self {
            logins_max: limits.logins_max,
            logins_per_user_max: limits.logins_per_user_max,
            login_ttl: limits.login_ttl,
            client: ClientConfig::default(),
        }
    }
}

impl VaultServiceConfig {
    /// The core's login limits.
    pub fn limits(&self) -> LoginLimits {
        LoginLimits {
            logins_max: self.logins_max,
            logins_per_user_max: self.logins_per_user_max,
            login_ttl: self.login_ttl,
        }
    }
}

/// The vault's server for one replica, over the threaded runtime: a
/// [`ServiceCore`] whose fleet steps are taken, blocking, through a runtime
/// [`Client`] session. Calls from many threads run at once.
pub struct VaultService<H: Hsm> {
    core: ServiceCore<H>,
    client: Client,
    stopped: AtomicBool,
    /// The origin of the core's clock.
    started: Instant,
}

impl<H: Hsm> std::fmt::Debug for VaultService<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultService")
            .field("replica", &self.core.replica())
            .field("session", &self.client.session())
            .finish_non_exhaustive()
    }
}

impl<H: Hsm> VaultService<H> {
    /// A service for `server`'s replica proposing through the fleet of `nodes`
    /// (a runtime client session is registered now).
    #[allow(clippy::disallowed_methods)] // logins expire by the host's clock
    pub fn start(
        server: crate::server::VaultServer<H>,
        nodes: Vec<NodeHandle>,
        cfg: VaultServiceConfig,
    ) -> Result<Self, ClientError> {
        let client = Client::connect(nodes, cfg.client)?;
        Ok(Self::with_client(server, client, cfg))
    }

    /// A service for `server`'s replica proposing through `client`, a session
    /// on the fleet however its nodes are reached (in process, or remote nodes
    /// of a network crate, so a service on a follower's host proposes through
    /// the leader). `cfg.client` is not used: `client` has its own.
    #[allow(clippy::disallowed_methods)] // logins expire by the host's clock
    pub fn with_client(
        server: crate::server::VaultServer<H>,
        client: Client,
        cfg: VaultServiceConfig,
    ) -> Self {
        Self {
            core: ServiceCore::new(server, cfg.limits()),
            client,
            stopped: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// Stops answering (as when the host goes down): every call is unreachable
    /// and logins awaiting finalization are forgotten. Their attempts stay spent.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.core.forget_logins();
    }

    /// Attaches `source`'s validation bundle to every reply from now on (see
    /// [`ServiceCore::serve`]). Call it again at each fleet rotation (or
    /// retirement).
    pub fn serve(&self, source: BundleSource) {
        self.core.serve(source);
    }

    /// Logins kept (awaiting their finalization, or a re-registration's upload).
    pub fn pending_logins(&self) -> usize {
        self.core.pending_logins()
    }

    #[allow(clippy::disallowed_methods)] // logins expire by the host's clock
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Handles one encoded `VaultClientRequest` and returns the encoded signed
    /// `VaultReply`, taking each fleet step the core asks for through the
    /// runtime client (blocking). Never panics on what a client sends.
    pub fn handle(&self, request: &[u8]) -> Vec<u8> {
        let mut progress = self.core.begin(request, self.now());
        loop {
            match progress {
                Progress::Reply(reply) => return reply,
                Progress::Wait { call, step } => {
                    let answer = match step {
                        // A response is a few hundred bytes against milliseconds
                        // of OPAQUE work: copying it out of the shared buffer
                        // costs nothing measurable.
                        FleetStep::Propose(command) => self.client.propose(command).map(Vec::from),
                        FleetStep::Read(query) => self.client.read(query),
                    }
                    .map_err(|e| {
                        tracing::warn!("vault service: the fleet did not commit a step: {e}");
                        NotCommitted
                    });
                    progress = self.core.resume(call, answer, self.now());
                }
            }
        }
    }
}

impl<H: Hsm> VaultEndpoint for VaultService<H> {
    fn replica(&self) -> ReplicaId {
        self.core.replica()
    }

    fn call(&self, request: &[u8]) -> Result<Vec<u8>, Unreachable> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(Unreachable {
                replica: self.core.replica(),
            });
        }
        Ok(self.handle(request))
    }
}
