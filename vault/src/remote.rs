//! The vault over the network: [`VaultListener`] serves a [`VaultService`] to
//! anonymous clients over the net crate's open channel (Noise NX or NK, the
//! server proving its replica's transport key), and [`RemoteVaultEndpoint`] is
//! the [`VaultEndpoint`] a [`VaultClient`](crate::VaultClient) uses to reach one
//! such service.
//!
//! A client that trusts the fleet through bundles ([`ServerTrust::Bundles`])
//! runs NX: the listener's handshake payload is the validation bundle it serves,
//! and before any byte of the user's leaves the client, the bundle must pass
//! the client's [`FleetVerifier`] (witness and operator pins) for this replica,
//! and the bundle's artifact must list the key the server proved as this
//! replica's `transport_key`. A client that knows the key
//! ([`ServerTrust::Pinned`]) runs NK. Either way the registration secret and
//! every OPAQUE message travel encrypted to a key the client verified, and the
//! client's own checks of every reply (signatures, bundles, consistency
//! proofs) still apply on top. `docs/protocol.md`, "Over the network", has the
//! whole flow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use vaultfleet::hsm::Hsm;
use vaultfleet::ReplicaId;
use vaultfleet_audit::{BundleError, FleetVerifier};
use vaultfleet_net::open::{
    ChannelError, ChannelId, ConnectError, OpenClientConfig, OpenConnection, OpenHandler,
    OpenServer, OpenServerConfig, OpenServerError, OpenStats, ServerKey,
};
use vaultfleet_net::{PublicKey, StaticSecret};

use crate::bundle_source::BundleSource;
use crate::error::Unreachable;
use crate::service::{VaultEndpoint, VaultService};

/// The service label bound into every vault channel's handshake.
pub const VAULT_CHANNEL_LABEL: &str = "vaultfleet-vault/v1";

/// Idle connections a [`RemoteVaultEndpoint`] keeps for reuse.
const IDLE_CONNECTIONS_MAX: usize = 4;

/// Why a remote vault service could not be reached, or was not trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteVaultError {
    /// The channel failed (socket, timeouts, Noise, framing, a busy server).
    #[error("the channel to replica {replica}'s service failed")]
    Channel {
        /// The replica.
        replica: ReplicaId,
        /// The cause.
        #[source]
        source: ChannelError,
    },
    /// The handshake's bundle did not verify for this replica (or there was
    /// none): nothing was sent.
    #[error("replica {replica}'s handshake bundle was refused")]
    Bundle {
        /// The replica.
        replica: ReplicaId,
        /// The bundle's broken link.
        #[source]
        source: BundleError,
    },
    /// The server proved a static key that the verified bundle does not list as
    /// this replica's transport key: nothing was sent.
    #[error("replica {replica}'s service proved key {proved}, which its bundle does not list")]
    TransportKeyNotListed {
        /// The replica.
        replica: ReplicaId,
        /// The key the server proved.
        proved: PublicKey,
    },
    /// The handshake's bundle verifies, but its artifact names another fleet
    /// than the one this endpoint was built for: nothing was sent.
    #[error("replica {replica}'s handshake bundle is of another fleet than {fleet_id}")]
    OtherFleet {
        /// The replica.
        replica: ReplicaId,
        /// The fleet this endpoint was built for.
        fleet_id: String,
    },
    /// A channel id that cannot be built (a fleet id of the wrong length).
    #[error("invalid channel for fleet id")]
    ChannelId(#[source] ChannelError),
    /// The listener could not start.
    #[error("the vault listener could not start")]
    Listen(#[source] OpenServerError),
}

/// Why the handshake check refused a server (kept typed inside
/// [`ConnectError::Refused`], then mapped onto [`RemoteVaultError`]).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the handshake bundle does not verify")]
    Bundle(#[source] BundleError),
    #[error("the proved key is not the replica's transport key in the bundle")]
    NotListed,
    #[error("the bundle's artifact is of another fleet than the channel's")]
    OtherFleet,
}

/// The bundle check of the handshake, shared by every endpoint of one client:
/// a [`FleetVerifier`] pinned to the witness's and the operator's keys, and the
/// client's clock (Unix seconds).
pub struct BundleTrust {
    verifier: Mutex<FleetVerifier>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Moves whenever what this trust accepts narrows (an epoch accepted, an
    /// epoch retired): kept connections checked before it are not reused.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for BundleTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleTrust")
            .field("newest_epoch", &self.verifier.lock().newest_epoch())
            .finish_non_exhaustive()
    }
}

impl BundleTrust {
    /// Trust in handshakes through `verifier` at the times `clock` gives. Give
    /// it a verifier with the same pins as the client's
    /// ([`VaultClient::with_verifier`](crate::VaultClient::with_verifier)),
    /// *without* [`FleetVerifier::require_consistency_proofs`]: a handshake
    /// carries no consistency proof, so such a verifier would refuse every
    /// bundle of a new checkpoint. The client's check of each reply requires
    /// the proof (`docs/protocol.md`, "Over the network").
    pub fn new(verifier: FleetVerifier, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Arc<Self> {
        Arc::new(Self {
            verifier: Mutex::new(verifier),
            clock,
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Applies an early epoch retirement (witnessed and countersigned) to the
    /// handshake check. A [`VaultClient`](crate::VaultClient) kept in step with
    /// this trust ([`VaultClient::keep_in_step`](crate::VaultClient::keep_in_step))
    /// calls it for every retirement a reply carries, so a retired epoch's
    /// transport keys are refused at the next handshake too, and connections
    /// checked before are not reused. Returns the epoch retired through.
    pub fn retire(&self, retirement: &[u8]) -> Result<u64, BundleError> {
        let now = (self.clock)();
        let mut verifier = self.verifier.lock();
        let before = verifier.retired_through();
        let through = verifier.retire(retirement, now)?;
        if verifier.retired_through() != before {
            self.narrowed();
        }
        Ok(through)
    }

    /// What this trust accepts has narrowed: kept connections are checked again.
    fn narrowed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The newest epoch a handshake bundle moved this trust to.
    pub fn newest_epoch(&self) -> Option<u64> {
        self.verifier.lock().newest_epoch()
    }

    /// Checks a handshake: `payload` must be a bundle that verifies for
    /// `replica` now, listing `proved` as its transport key. Only then is the
    /// bundle accepted (the epoch moves forward, never back).
    fn check(
        &self,
        fleet_id: &str,
        replica: ReplicaId,
        proved: &[u8; 32],
        payload: &[u8],
    ) -> Result<(), Refusal> {
        let now = (self.clock)();
        let mut verifier = self.verifier.lock();
        let accepted = verifier
            .check(payload, now, replica)
            .map_err(Refusal::Bundle)?;
        // The channel's fleet id is public (anyone can compute the prologue):
        // the fleet is bound by the signed artifact, which must name it.
        if accepted.artifact.fleet_id != fleet_id {
            return Err(Refusal::OtherFleet);
        }
        let listed = accepted
            .artifact
            .replica(replica)
            .map(|r| r.transport_key)
            .ok_or(Refusal::Bundle(BundleError::ReplicaNotInBundle(replica)))?;
        if listed != *proved {
            return Err(Refusal::NotListed);
        }
        let before = verifier.newest_epoch();
        verifier.accept(&accepted).map_err(Refusal::Bundle)?;
        if verifier.newest_epoch() != before {
            self.narrowed();
        }
        Ok(())
    }
}

/// How a [`RemoteVaultEndpoint`] knows it reached the right server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerTrust {
    /// The replica's transport key, pinned by the application: Noise NK.
    Pinned(PublicKey),
    /// Validation bundles: Noise NX, the bundle in the handshake must verify and
    /// list the key the server proved.
    Bundles(Arc<BundleTrust>),
}

/// A [`VaultEndpoint`] for one vault service on another host, reached through
/// the open channel. Connections are opened on demand, checked before use and
/// kept (a few) for the next request; one request runs per connection.
pub struct RemoteVaultEndpoint {
    replica: ReplicaId,
    address: SocketAddr,
    channel: ChannelId,
    trust: ServerTrust,
    config: OpenClientConfig,
    fleet_id: String,
    /// Idle connections, each with when it was last used, when its handshake
    /// was checked, and the trust's generation it was checked at.
    idle: Mutex<Vec<Kept>>,
    /// Idle connections older than this are not reused (the server closes idle
    /// ones; keep this below its `idle_timeout`).
    reuse_within: Duration,
    /// No connection is used longer than this after its handshake: a rotation
    /// reaches a busy client through a fresh handshake within it.
    checked_within: Duration,
}

/// A connection kept for reuse.
struct Kept {
    conn: OpenConnection,
    used: Instant,
    checked: Instant,
    generation: u64,
}

impl std::fmt::Debug for RemoteVaultEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteVaultEndpoint")
            .field("replica", &self.replica)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl RemoteVaultEndpoint {
    /// The service of `replica` at `address`, on fleet `fleet_id`, trusted by
    /// `trust`.
    pub fn new(
        replica: ReplicaId,
        address: SocketAddr,
        fleet_id: &str,
        trust: ServerTrust,
        config: OpenClientConfig,
    ) -> Result<Self, RemoteVaultError> {
        let channel =
            ChannelId::new(VAULT_CHANNEL_LABEL, fleet_id).map_err(RemoteVaultError::ChannelId)?;
        config.validate().map_err(RemoteVaultError::ChannelId)?;
        Ok(Self {
            replica,
            address,
            channel,
            trust,
            config,
            fleet_id: fleet_id.to_string(),
            idle: Mutex::new(Vec::new()),
            reuse_within: Duration::from_secs(10),
            checked_within: Duration::from_secs(60),
        })
    }

    /// Opens a connection and runs the handshake's check, without sending
    /// anything: the typed reason a server is not trusted. The connection is
    /// kept for the next request.
    pub fn connect(&self) -> Result<(), RemoteVaultError> {
        let (conn, checked, generation) = self.open()?;
        self.put_back(conn, checked, generation);
        Ok(())
    }

    fn trust_generation(&self) -> u64 {
        match &self.trust {
            ServerTrust::Pinned(_) => 0,
            ServerTrust::Bundles(trust) => trust.generation(),
        }
    }

    /// A fresh, checked connection, with when it was checked and the trust's
    /// generation before the check.
    #[allow(clippy::disallowed_methods)] // connection reuse runs on the host's clock
    fn open(&self) -> Result<(OpenConnection, Instant, u64), RemoteVaultError> {
        let generation = self.trust_generation();
        let checked = Instant::now();
        self.handshake().map(|conn| (conn, checked, generation))
    }

    fn handshake(&self) -> Result<OpenConnection, RemoteVaultError> {
        let replica = self.replica;
        let fleet_id = self.fleet_id.as_str();
        let result = match &self.trust {
            ServerTrust::Pinned(key) => OpenConnection::connect(
                self.address,
                &self.channel,
                ServerKey::Pinned(*key),
                &self.config,
                // NK: only the pinned key's holder completes the handshake.
                |_: &[u8; 32], _: &[u8]| Ok::<(), Refusal>(()),
            ),
            ServerTrust::Bundles(trust) => OpenConnection::connect(
                self.address,
                &self.channel,
                ServerKey::Prove,
                &self.config,
                |proved: &[u8; 32], payload: &[u8]| trust.check(fleet_id, replica, proved, payload),
            ),
        };
        result.map_err(|e| match e {
            ConnectError::Channel(source) => RemoteVaultError::Channel { replica, source },
            ConnectError::Refused {
                cause: Refusal::Bundle(source),
                ..
            } => RemoteVaultError::Bundle { replica, source },
            ConnectError::Refused {
                key,
                cause: Refusal::NotListed,
            } => RemoteVaultError::TransportKeyNotListed {
                replica,
                proved: key,
            },
            ConnectError::Refused {
                cause: Refusal::OtherFleet,
                ..
            } => RemoteVaultError::OtherFleet {
                replica,
                fleet_id: self.fleet_id.clone(),
            },
        })
    }

    /// Drops the kept connections: the next request runs a fresh handshake
    /// (and bundle check), as after the client moved to a new fleet epoch.
    pub fn close_idle(&self) {
        self.idle.lock().clear();
    }

    #[allow(clippy::disallowed_methods)] // connection reuse runs on the host's clock
    fn put_back(&self, conn: OpenConnection, checked: Instant, generation: u64) {
        let mut idle = self.idle.lock();
        if idle.len() < IDLE_CONNECTIONS_MAX {
            idle.push(Kept {
                conn,
                used: Instant::now(),
                checked,
                generation,
            });
        }
    }

    /// A kept connection still fit for use: used recently (the server has not
    /// closed it), checked recently, and checked under what the trust accepts
    /// now (no epoch accepted or retired since its handshake).
    fn reusable(&self) -> Option<Kept> {
        let generation = self.trust_generation();
        let mut idle = self.idle.lock();
        while let Some(kept) = idle.pop() {
            if kept.used.elapsed() < self.reuse_within
                && kept.checked.elapsed() < self.checked_within
                && kept.generation == generation
            {
                return Some(kept);
            }
        }
        None
    }

    /// Sends one request and returns the reply, with the typed reason of a
    /// failure. A kept connection that turns out closed (the server's idle
    /// timeout: the socket is closed or reset) is replaced by a fresh one once;
    /// the vault recognises a request sent twice by its request id. Any other
    /// failure (a timeout, a refused frame) is returned at once.
    pub fn call_remote(&self, request: &[u8]) -> Result<Vec<u8>, RemoteVaultError> {
        let replica = self.replica;
        if let Some(Kept {
            mut conn,
            checked,
            generation,
            ..
        }) = self.reusable()
        {
            match conn.call(request) {
                Ok(reply) => {
                    self.put_back(conn, checked, generation);
                    return Ok(reply);
                }
                Err(source @ (ChannelError::Busy | ChannelError::Unavailable)) => {
                    self.put_back(conn, checked, generation);
                    return Err(RemoteVaultError::Channel { replica, source });
                }
                // Closed while kept (the server's idle timeout): once more, fresh.
                Err(e @ (ChannelError::Closed | ChannelError::Io(_))) => {
                    tracing::debug!(replica, "vault endpoint: a kept connection failed: {e}");
                }
                Err(source) => return Err(RemoteVaultError::Channel { replica, source }),
            }
        }
        let (mut conn, checked, generation) = self.open()?;
        match conn.call(request) {
            Ok(reply) => {
                self.put_back(conn, checked, generation);
                Ok(reply)
            }
            Err(source) => {
                if matches!(source, ChannelError::Busy | ChannelError::Unavailable) {
                    self.put_back(conn, checked, generation);
                }
                Err(RemoteVaultError::Channel { replica, source })
            }
        }
    }
}

impl VaultEndpoint for RemoteVaultEndpoint {
    fn replica(&self) -> ReplicaId {
        self.replica
    }

    fn call(&self, request: &[u8]) -> Result<Vec<u8>, Unreachable> {
        self.call_remote(request).map_err(|e| {
            tracing::warn!(replica = self.replica, "vault endpoint: {e}");
            Unreachable {
                replica: self.replica,
            }
        })
    }
}

/// Serves a [`VaultService`] over the open channel: proves the replica's
/// transport key (the public half is the fleet artifact's `transport_key` for
/// this replica) and hands every client the validation bundle it serves.
pub struct VaultListener<H: Hsm + 'static> {
    service: Arc<VaultService<H>>,
    server: OpenServer,
}

impl<H: Hsm + 'static> std::fmt::Debug for VaultListener<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultListener")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl<H: Hsm + 'static> VaultListener<H> {
    /// Starts serving `service` on fleet `fleet_id`, proving `transport_key`
    /// (from the replica's key file or HSM-sealed store). Until
    /// [`VaultListener::serve`] is called the handshake carries no bundle, and
    /// clients that trust through bundles refuse it.
    pub fn start(
        service: Arc<VaultService<H>>,
        fleet_id: &str,
        transport_key: StaticSecret,
        config: OpenServerConfig,
    ) -> Result<Self, RemoteVaultError> {
        let channel =
            ChannelId::new(VAULT_CHANNEL_LABEL, fleet_id).map_err(RemoteVaultError::ChannelId)?;
        let handler: Arc<dyn OpenHandler> = {
            let service = Arc::clone(&service);
            // A stopped service has no answer: the client is told `unavailable`.
            Arc::new(move |request: &[u8]| service.call(request).ok())
        };
        let server = OpenServer::start(channel, transport_key, Vec::new(), handler, config)
            .map_err(RemoteVaultError::Listen)?;
        Ok(Self { service, server })
    }

    /// Serves `source`: its bundle goes into every later handshake, and the
    /// service attaches it (with proofs and retirements) to every reply.
    pub fn serve(&self, source: BundleSource) -> Result<(), RemoteVaultError> {
        self.server
            .set_payload(source.bundle().to_vec())
            .map_err(|e| RemoteVaultError::Listen(OpenServerError::Channel(e)))?;
        self.service.serve(source);
        Ok(())
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The transport key's public half (what the fleet artifact lists).
    pub fn public_key(&self) -> PublicKey {
        self.server.public_key()
    }

    /// What the listener has seen.
    pub fn stats(&self) -> OpenStats {
        self.server.stats()
    }

    /// Stops listening and closes every connection.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }
}
