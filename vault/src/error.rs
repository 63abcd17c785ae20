//! The vault's errors, one enum per boundary: [`VaultError`] for the server side
//! (keys, HSM, client messages, stored records) and [`VaultClientError`] for a
//! [`VaultClient`](crate::VaultClient) call, each nesting its typed cause
//! ([`InvalidInput`], [`KeysError`], [`RecordError`], [`ReplyError`],
//! [`ProtocolFailure`], [`Unavailability`]) instead of flattening it into text.

use opaque_ke::errors::ProtocolError;
use vaultfleet::hsm::HsmError;
use vaultfleet::wire::DecodeError;
use vaultfleet::ReplicaId;
use vaultfleet_audit::{BundleError, NoteError};

use crate::limits::{MAX_ATTEMPTS_LIMIT, SECRET_MAX};
use crate::user_id::InvalidUserId;

/// The service at the other end could not be reached (its host is down, or it
/// was stopped). The request may or may not have had an effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vault service of replica {replica} unreachable")]
pub struct Unreachable {
    /// The replica whose service did not answer.
    pub replica: ReplicaId,
}

/// What went wrong on the server side of the vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The HSM refused or failed.
    #[error("vault HSM operation failed: {0}")]
    Hsm(#[from] HsmError),
    /// The vault's keys are missing or unusable.
    #[error("vault keys: {0}")]
    Keys(#[from] KeysError),
    /// A client message did not decode or is out of bounds.
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidInput),
    /// The client's OPAQUE finalization did not verify: it does not know the code,
    /// or the messages were tampered with.
    #[error("the OPAQUE login did not verify")]
    LoginFailed,
    /// A stored record or sealed secret does not open (tampered state, or another
    /// fleet's record key).
    #[error("stored vault record unusable: {0}")]
    Record(#[from] RecordError),
    /// The AEAD refused to encrypt a recovered secret for the client.
    #[error("XChaCha20-Poly1305 refused to encrypt the secret for the client")]
    Encrypt,
    /// A proven login's request (its purpose, its new registration) does not
    /// carry a valid intent tag under the login's session key: altered on the way.
    #[error("the request's intent tag does not verify under the login's session key")]
    IntentNotAuthentic,
    /// A command was asked of a verified login whose authenticated purpose is
    /// another (a recovery's login cannot delete, and so on).
    #[error("the login's authenticated purpose is {verified:?}, this step needs {needed:?}")]
    PurposeMismatch {
        /// The purpose the login's finish was authenticated with.
        verified: crate::wire::VaultLoginPurpose,
        /// The purpose the step needs.
        needed: crate::wire::VaultLoginPurpose,
    },
}

impl From<InvalidUserId> for VaultError {
    fn from(e: InvalidUserId) -> Self {
        VaultError::Invalid(InvalidInput::UserId(e))
    }
}

/// Why the vault's keys cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The HSM holds no key sealing the OPAQUE server setup.
    #[error(
        "the HSM holds no {label:?} key: provision the vault on this HSM's security world first"
    )]
    SetupKeyMissing {
        /// The label looked up.
        label: &'static str,
    },
    /// The unsealed OPAQUE server setup does not decode.
    #[error("the sealed OPAQUE server setup does not decode: {0}")]
    SetupUndecodable(#[source] ProtocolError),
}

/// A value out of bounds or malformed: an argument of a client call, or a field
/// of a message a client sent to the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// The user id is out of bounds.
    #[error(transparent)]
    UserId(#[from] InvalidUserId),
    /// The secret is empty or longer than [`SECRET_MAX`] bytes.
    #[error("a secret must be 1..={SECRET_MAX} bytes, this one has {bytes}")]
    Secret {
        /// The secret's length, in bytes.
        bytes: usize,
    },
    /// The attempt limit is outside 1..=[`MAX_ATTEMPTS_LIMIT`].
    #[error("max_attempts {0} is outside 1..={MAX_ATTEMPTS_LIMIT}")]
    MaxAttempts(u32),
    /// The credential nonce is not 32 bytes.
    #[error("the credential nonce must be 32 bytes, this one has {bytes}")]
    NonceLength {
        /// The nonce's length, in bytes.
        bytes: usize,
    },
    /// The credential nonce's tag does not verify: the fleet did not draw this
    /// nonce for this user.
    #[error(
        "the credential nonce was not drawn by this fleet for this user (its tag does not verify)"
    )]
    NonceNotGenuine,
    /// The announced secret digest is not 32 bytes.
    #[error("the secret digest must be 32 bytes, this one has {bytes}")]
    SecretDigestLength {
        /// The digest's length, in bytes.
        bytes: usize,
    },
    /// The request carries no request id.
    #[error("the request has no request id")]
    NoRequestId,
    /// The request is not the operation this step takes.
    #[error("the request is not the operation this step takes")]
    UnexpectedOperation,
    /// The login finish names no known purpose.
    #[error("unknown login purpose")]
    UnknownPurpose,
    /// A re-registration names another user than its login's.
    #[error("the login is for another user")]
    LoginOfAnotherUser,
    /// An OPAQUE message does not decode or does not fit the server's setup.
    #[error("invalid {message}: {source}")]
    Opaque {
        /// Which OPAQUE message.
        message: &'static str,
        /// What opaque-ke reported.
        #[source]
        source: ProtocolError,
    },
}

impl InvalidInput {
    /// Checks a registration's secret and attempt limit against the vault's
    /// limits (client and server alike; the user id is checked by
    /// [`UserId::new`](crate::UserId::new)).
    pub(crate) fn check_registration(secret: &[u8], max_attempts: u32) -> Result<(), Self> {
        if secret.is_empty() || secret.len() > SECRET_MAX {
            return Err(InvalidInput::Secret {
                bytes: secret.len(),
            });
        }
        if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(InvalidInput::MaxAttempts(max_attempts));
        }
        Ok(())
    }

    /// A short, stable description, the same in every build: what a reply
    /// carries (never a dependency's error text, whose wording may change).
    pub fn reply_detail(&self) -> &'static str {
        match self {
            InvalidInput::UserId(_) => "invalid user id",
            InvalidInput::Secret { .. } => "invalid secret length",
            InvalidInput::MaxAttempts(_) => "invalid max_attempts",
            InvalidInput::NonceLength { .. } => "invalid credential nonce length",
            InvalidInput::NonceNotGenuine => "credential nonce not drawn by this fleet",
            InvalidInput::SecretDigestLength { .. } => "invalid secret digest length",
            InvalidInput::NoRequestId => "request has no request id",
            InvalidInput::UnexpectedOperation => "unexpected operation",
            InvalidInput::UnknownPurpose => "unknown login purpose",
            InvalidInput::LoginOfAnotherUser => "the login is for another user",
            InvalidInput::Opaque { message, .. } => message,
        }
    }
}

/// Why a stored record cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The OPAQUE registration record does not decode.
    #[error("the OPAQUE record does not decode: {0}")]
    OpaqueRecord(#[source] ProtocolError),
    /// The sealed secret does not open under this fleet's record key.
    #[error("the sealed secret does not open: {0}")]
    SealedSecret(#[source] HsmError),
}

/// Why a vault client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultClientError {
    /// The recovery code is wrong; the attempt is spent.
    #[error("wrong recovery code: {attempts_left} attempts left{}", if *.attempts_left == 0 { " (the record has been erased)" } else { "" })]
    WrongCode {
        /// Attempts left after this one; 0 means the record is now erased.
        attempts_left: u32,
    },
    /// The record was erased after its last attempt; nothing can recover it.
    #[error("locked: the record was erased after its last attempt and cannot be recovered or registered again")]
    Locked,
    /// No record for this user (never registered, or deleted).
    #[error("not registered: the vault holds no record for this user")]
    NotRegistered,
    /// A record exists; replace it with `reregister`, which needs the current code.
    #[error(
        "already registered: re-register with the current recovery code to replace the record"
    )]
    AlreadyRegistered,
    /// No service gave an answer the step could rely on in time (no leader, no
    /// majority, every service unreachable). The step may or may not have taken
    /// effect; retrying is safe.
    #[error("fleet unavailable: {0}")]
    Unavailable(#[source] Unavailability),
    /// A delete or a re-registration's upload was sent and got no answer the
    /// client could rely on: it may have taken effect, or may still take effect
    /// (a copy delivered late) until the login it was sent under expires at the
    /// service (the service's `login_ttl`, 60 s by default). Until then a
    /// repeat of the same request learns its outcome; after it, a recovery (or
    /// a new delete) shows the user's standing.
    #[error("the {operation} may or may not have taken effect, and may still until its login expires at the service: {cause}")]
    OutcomeUnknown {
        /// What was sent.
        operation: Uncertain,
        /// Why no answer could be relied on: the fleet was unavailable, or
        /// every reply to the request failed verification.
        #[source]
        cause: Box<VaultClientError>,
    },
    /// A reply failed verification (bad signature, unknown replica, not for our
    /// request, refused bundle): an intermediary, or a misconfigured fleet key.
    #[error("reply from replica {replica} refused: {cause}")]
    BadReply {
        /// The replica the reply claims to come from.
        replica: ReplicaId,
        /// What failed.
        #[source]
        cause: ReplyError,
    },
    /// The fleet refused the request.
    #[error("request refused by the fleet ({reason:?}): {detail}")]
    Rejected {
        /// Why, from the reply's status.
        reason: Rejection,
        /// The service's own explanation, as it sent it (text from the fleet,
        /// for people; match on `reason`).
        detail: String,
    },
    /// An argument is out of bounds.
    #[error("invalid argument: {0}")]
    InvalidInput(#[from] InvalidInput),
    /// The key-stretching parameters are not valid Argon2 parameters.
    #[error("invalid Argon2 parameters: {0}")]
    KsfParams(#[source] argon2::Error),
    /// The OPAQUE exchange or the secret's transport failed for another reason
    /// than a wrong code.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolFailure),
    /// The operating system's random number generator failed; the client never
    /// falls back to a fixed seed.
    #[error("the operating system's random number generator failed: {0}")]
    Randomness(#[source] rand::Error),
    /// A registration with this nonce or record is stored with other fields than
    /// this client asked for (a rewritten registration): it did not succeed.
    #[error("the fleet holds this registration with other fields (altered on the way)")]
    RegistrationConflict,
    /// A signed reply says the fleet did or stored something else than this
    /// client asked for (another purpose, limit or registration).
    #[error("the fleet's reply does not confirm what was asked: {0}")]
    NotConfirmed(#[source] Mismatch),
}

/// An operation whose outcome a [`VaultClientError::OutcomeUnknown`] leaves open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Uncertain {
    /// A delete.
    Delete,
    /// A re-registration's upload (the replacement of the record).
    Reregistration,
}

impl std::fmt::Display for Uncertain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Uncertain::Delete => "delete",
            Uncertain::Reregistration => "re-registration",
        })
    }
}

/// What a signed reply reported differently from what the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    /// The stored attempt limit.
    #[error("the stored limit is {stored}, this client asked for {asked}")]
    MaxAttempts {
        /// What the reply says is stored.
        stored: u32,
        /// What the client asked for.
        asked: u32,
    },
    /// The stored registration tag (limit and secret digest, as the fleet's HSM
    /// bound them at the start) is not the one this registration was given.
    #[error("the stored registration is not the one this client started")]
    Registration,
    /// The login's purpose the fleet acted on.
    #[error("the fleet acted on another purpose than the login's")]
    Purpose,
    /// The generation a re-registration reports is not after the login's.
    #[error("the new generation {new} is not after the login's {login}")]
    Generation {
        /// The reported generation.
        new: u64,
        /// The generation of the login that authorised it.
        login: u64,
    },
}

impl From<InvalidUserId> for VaultClientError {
    fn from(e: InvalidUserId) -> Self {
        VaultClientError::InvalidInput(InvalidInput::UserId(e))
    }
}

/// Why no service's answer could be relied on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailability {
    /// The client was given no vault service to ask.
    #[error("the client has no vault service to ask")]
    NoService,
    /// The client made no attempt (zero rounds or restarts configured).
    #[error("no service was asked")]
    NotAsked,
    /// The last service asked could not be reached.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// The last service answered that the fleet did not commit the step.
    #[error("replica {replica}'s service: {detail}")]
    Service {
        /// The replica whose service answered.
        replica: ReplicaId,
        /// The service's explanation, as it sent it.
        detail: String,
    },
    /// The login was lost on the service side every time (its service restarted,
    /// or it expired before the finalization arrived).
    #[error("the login was lost by replica {replica}'s service: {detail}")]
    LoginLost {
        /// The replica whose service lost it.
        replica: ReplicaId,
        /// The service's explanation, as it sent it.
        detail: String,
    },
}

/// Why the fleet refused a request, from the reply's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The request is malformed or out of bounds.
    BadRequest,
    /// The request id was used before for another request, or the registration
    /// was used before (a replay).
    RequestReused,
    /// The request's intent tag did not verify under its login's session: it was
    /// altered on the way.
    IntentNotAuthentic,
    /// The registration was issued before the user's latest delete or replace
    /// (stale, or replayed): start a new one.
    RegistrationStale,
}

/// Why a reply was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply, or its signed body, does not decode.
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
    /// The client pins no response key for the answering replica.
    #[error("no pinned response key for this replica")]
    UnknownReplica,
    /// The reply carries no validation bundle (bundle mode).
    #[error("no validation bundle in the reply")]
    NoBundle,
    /// The validation bundle does not verify.
    #[error("validation bundle refused: {0}")]
    Bundle(#[source] BundleError),
    /// The verified bundle's fleet has no such replica.
    #[error("replica not in the fleet")]
    NotInFleet,
    /// The signature is not 64 bytes.
    #[error("signature is not 64 bytes")]
    SignatureLength,
    /// The signature does not verify under the replica's response key.
    #[error("signature does not verify under the replica's response key")]
    Signature,
    /// The body was signed for another replica than the one asked.
    #[error("signed by a replica other than the one asked")]
    OtherReplica,
    /// The reply answers another request.
    #[error("the reply answers another request")]
    OtherRequest,
    /// The bundle verified but the client could not keep its fleet epoch
    /// (including a [`BundleError::StaleCheck`] that a re-check did not clear).
    #[error("cannot keep the accepted fleet epoch: {0}")]
    AcceptEpoch(#[source] BundleError),
    /// The reply carries more epoch retirements than a reply may.
    #[error("the reply carries {count} epoch retirements, at most {max} are read")]
    TooManyRetirements {
        /// In the reply.
        count: usize,
        /// [`RETIREMENTS_MAX`](crate::RETIREMENTS_MAX).
        max: usize,
    },
}

/// Why a [`BundleSource`](crate::BundleSource) cannot be built: the bundle and
/// the witness log it is handed are not what a client would accept together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleSourceError {
    /// The bundle does not decode.
    #[error("the bundle does not decode: {0}")]
    Bundle(#[source] BundleError),
    /// The bundle's checkpoint is not a signed note carrying a checkpoint.
    #[error("the bundle's checkpoint does not parse: {0}")]
    Checkpoint(#[source] NoteError),
    /// The witness log handed over is shorter than the bundle's checkpoint.
    #[error("the bundle's checkpoint has size {size}, the log handed over only {held} leaves")]
    LogTooShort {
        /// The checkpoint's size.
        size: u64,
        /// The log's size.
        held: u64,
    },
    /// The witness log handed over is not the log the checkpoint signs.
    #[error("the log's root at size {size} is not the bundle's checkpoint root")]
    NotTheCheckpointedLog {
        /// The checkpoint's size.
        size: u64,
    },
    /// An epoch retirement does not decode.
    #[error("an epoch retirement does not decode: {0}")]
    Retirement(#[source] vaultfleet::codec::DecodeError),
    /// More retirements than a reply may carry.
    #[error("{count} epoch retirements, a reply carries at most {max}")]
    TooManyRetirements {
        /// Handed over.
        count: usize,
        /// [`RETIREMENTS_MAX`](crate::RETIREMENTS_MAX).
        max: usize,
    },
}

/// The OPAQUE exchange or the secret's transport failed for another reason
/// than a wrong code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolFailure {
    /// opaque-ke refused a message or a step.
    #[error("OPAQUE: {0}")]
    Opaque(#[from] ProtocolError),
    /// The recovered secret's nonce is not 24 bytes.
    #[error("the secret's nonce must be 24 bytes, this one has {bytes}")]
    SecretNonceLength {
        /// The nonce's length, in bytes.
        bytes: usize,
    },
    /// The recovered secret does not decrypt under the session key.
    #[error("the recovered secret does not decrypt under the session key")]
    SecretDecrypt,
}
