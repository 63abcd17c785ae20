//! `vaultfleet-vault`, the Backup Key Vault: a user's backup key released only to whoever knows the
//! recovery code, with at most `max_attempts` wrong guesses (10 by default)
//! enforced by the fleet through consensus.
//!
//! Three parts, as WhatsApp's HSM Backup Key Vault is built:
//!
//! * [`BackupVault`], the replicated [`StateMachine`](vaultfleet::StateMachine): OPAQUE
//!   records, secrets sealed under the fleet's HSM record key, and the guess
//!   counters. Deterministic: it draws no randomness and sees no secret in clear.
//! * [`VaultService`], beside each node: runs the server side of OPAQUE
//!   (`opaque-ke`, Ristretto255 + triple-DH + Argon2id), proposes each step through
//!   consensus, and signs every reply with its replica's response key. A login is
//!   answered only after the command spending its attempt has committed.
//!   [`ServiceCore`] is its sans-IO core (over [`VaultServer`]'s OPAQUE
//!   steps), which the threaded service and the simulator both drive. A
//!   [`BundleSource`] gives it what replies carry for clients that trust the
//!   fleet through bundles: the bundle, a consistency proof from the
//!   checkpoint the client last accepted, and early epoch retirements.
//! * [`VaultClient`]: `register`, `recover`, `reregister`, `delete`, with typed
//!   errors ([`VaultClientError`], which keeps each cause as a typed value: a
//!   refused reply's [`ReplyError`], and within it the bundle's `BundleError`);
//!   it checks every reply's signature and never sends the recovery code anywhere.
//!
//! A [`UserId`] is checked against its bounds once, where it is built; the
//! server, the service and the machine take it as checked. Errors live in one
//! module, the cryptographic constructions (what each MAC, AEAD and signature
//! covers) in another, so keys, server and client depend on them and not on
//! each other.
//!
//! `docs/protocol.md` has the message flow and what each party learns;
//! `docs/threat-model.md` what each attacker can and cannot do.

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bundle_source;
mod client;
mod crypto;
mod error;
mod keys;
mod limits;
mod machine;
mod peers;
mod remote;
mod server;
mod service;
mod user_id;
pub mod wire;

pub use bundle_source::{BundleSource, ReplyExtras, RETIREMENTS_MAX};
pub use client::{
    verify_bundled_reply, verify_pinned_reply, BundledReply, ClientLoginFlow,
    ClientRegistrationFlow, KsfParams, LoginOpened, VaultClient, VaultClientConfig,
};
pub use crypto::{authenticate_request, open_recovered_secret, registration_secret_digest};
pub use error::{
    BundleSourceError, InvalidInput, KeysError, Mismatch, ProtocolFailure, RecordError, Rejection,
    ReplyError, Unavailability, Uncertain, Unreachable, VaultClientError, VaultError,
};
pub use keys::{VaultKeys, VaultPublicKeys};
pub use limits::{DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_LIMIT, SECRET_MAX, USER_ID_MAX};
pub use machine::{BackupVault, UserView};
pub use peers::{peer_directory, PeersError};
pub use remote::{
    BundleTrust, RemoteVaultEndpoint, RemoteVaultError, ServerTrust, VaultListener,
    VAULT_CHANNEL_LABEL,
};
pub use server::{
    PendingLogin, Registration, RegistrationStarted, RegistrationTerms, VaultServer, VerifiedLogin,
};
/// The vault service's metric names (counters; never a user id as a label).
pub use service::telemetry;
pub use service::{
    Call, FleetStep, LoginLimits, NotCommitted, Progress, ServiceCore, VaultEndpoint, VaultService,
    VaultServiceConfig,
};
pub use user_id::{InvalidUserId, UserId};

/// The OPAQUE cipher suite of the vault (RFC 9807's Ristretto255 / SHA-512
/// configuration, with Argon2id as the key-stretching function).
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// The OPAQUE context string both sides bind into the key exchange.
pub(crate) const OPAQUE_CONTEXT: &[u8] = b"vaultfleet backup key vault v1";
