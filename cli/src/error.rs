//! The command's errors: each keeps the library error that caused it as its
//! source, with the file or step it concerns, so `main` can print the whole chain.

use std::path::PathBuf;

use vaultfleet::codec::EncodeError;
use vaultfleet::HsmError;
use vaultfleet_audit::fleet::evidence::{AttestationError, EvidenceError};
use vaultfleet_audit::pins::PinsError;
use vaultfleet_audit::witness::{CountersignError, LogError, WitnessError};
use vaultfleet_audit::{ArtifactError, BundleError, NoteError, ProofError};
use vaultfleet_vault::VaultError;

/// Why a command failed (a failed audit is not an error: it reports and exits 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A file or folder could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A soft HSM file could not be opened.
    #[error("cannot open the soft HSM {}", path.display())]
    HsmFile {
        /// The HSM's file.
        path: PathBuf,
        /// Why.
        #[source]
        source: HsmError,
    },
    /// An HSM refused an operation.
    #[error("an HSM operation failed ({what})")]
    Hsm {
        /// The operation.
        what: &'static str,
        /// Why.
        #[source]
        source: HsmError,
    },
    /// The vault's keys could not be provisioned or opened.
    #[error("the vault keys of the security world")]
    VaultKeys(#[source] VaultError),
    /// A replica's transport key file does not unseal to 32 bytes.
    #[error("{}: the sealed transport key is not 32 bytes", path.display())]
    TransportKey {
        /// The sealed key's file.
        path: PathBuf,
    },
    /// A fleet artifact did not encode or decode.
    #[error("the fleet artifact")]
    Artifact(#[from] ArtifactError),
    /// An encoding failed.
    #[error("cannot encode {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why.
        #[source]
        source: EncodeError,
    },
    /// Deployment evidence did not decode.
    #[error("{}: not deployment evidence", path.display())]
    Evidence {
        /// The evidence file.
        path: PathBuf,
        /// Why.
        #[source]
        source: EvidenceError,
    },
    /// A device certificate or attestation could not be made.
    #[error("the attestation of replica {replica}")]
    Attestation {
        /// The replica.
        replica: u64,
        /// Why.
        #[source]
        source: AttestationError,
    },
    /// A validation bundle did not decode.
    #[error("the validation bundle")]
    Bundle(#[from] BundleError),
    /// The witness could not be opened or refused to act.
    #[error("the witness")]
    Witness(#[from] WitnessError),
    /// The witness refused to sign (an epoch signed already, a digest reused, a
    /// time going back).
    #[error("the witness refused to sign")]
    WitnessRefused(#[source] WitnessError),
    /// The witness's published log did not parse.
    #[error("{}: the witness log", path.display())]
    Log {
        /// The log's file.
        path: PathBuf,
        /// Why.
        #[source]
        source: LogError,
    },
    /// The operator could not countersign.
    #[error("countersigning")]
    Countersign(#[from] CountersignError),
    /// A Merkle proof could not be made.
    #[error("the Merkle proof")]
    Proof(#[from] ProofError),
    /// A checkpoint note did not parse.
    #[error("the checkpoint note")]
    Note(#[from] NoteError),
    /// The witness has no entry for this epoch.
    #[error("the witness has not signed epoch {epoch} of {namespace}")]
    NotWitnessed {
        /// The epoch.
        epoch: u64,
        /// The namespace.
        namespace: String,
    },
    /// The witness signed another digest for this epoch.
    #[error("the witness signed another digest for epoch {epoch}: refusing to countersign")]
    DigestMismatch {
        /// The epoch.
        epoch: u64,
    },
    /// The countersignature file is not a 64-byte signature.
    #[error("{}: not a 64-byte countersignature", path.display())]
    Countersignature {
        /// The file.
        path: PathBuf,
    },
    /// The witness's log of the namespace is empty.
    #[error("the witness has no log for {namespace}")]
    EmptyLog {
        /// The namespace.
        namespace: String,
    },
    /// A file meant to hold an artifact holds neither an artifact nor evidence.
    #[error("{}: neither a fleet artifact nor deployment evidence", path.display())]
    NotAnArtifact {
        /// The file.
        path: PathBuf,
        /// Why it is not evidence either.
        #[source]
        source: EvidenceError,
    },
    /// The fleet artifact lists no replica.
    #[error("the fleet artifact lists no replica: give --replica")]
    NoReplica,
    /// The witness's key list does not parse.
    #[error("{}: line {line} is not `NAME NOT_BEFORE`", path.display())]
    KeysFile {
        /// The key list's file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
    },
    /// A URL is not one the HTTP client takes.
    #[error("the URL")]
    Http(#[source] vaultfleet_tlog::HttpError),
    /// A note verifier key does not parse.
    #[error("the verifier key {vkey:?}")]
    Vkey {
        /// The key as given.
        vkey: String,
        /// Why.
        #[source]
        source: NoteError,
    },
    /// The pinned cosigners or their threshold are not usable.
    #[error("the pinned cosigners")]
    CosignerPins(#[source] vaultfleet_audit::CosignerPinError),
    /// `--cosigners-required` does not fit the `--cosigner` keys given.
    #[error("--cosigners-required {required} with {listed} --cosigner keys: require 1 to {listed} when cosigners are listed, and list them to require any")]
    CosignersRequired {
        /// Required.
        required: usize,
        /// Listed.
        listed: usize,
    },
    /// A runtime for the HTTP calls could not start.
    #[error("cannot start the runtime for HTTP calls")]
    Runtime(#[source] std::io::Error),
    /// The signal handlers could not be installed.
    #[error("cannot watch SIGTERM and SIGINT")]
    Signals(#[source] vaultfleet_node::run::SignalError),
    /// `--operator-key` is not 64 hex characters.
    #[error("--operator-key must be the operator's Ed25519 public key as 64 hex characters")]
    OperatorKey,
    /// A `--cosigner` value is not `URL,VKEY`.
    #[error("--cosigner {0:?} is not URL,VKEY")]
    CosignerSpec(String),
    /// A `--log` value is not `ORIGIN=VKEY`.
    #[error("--log {0:?} is not ORIGIN=VKEY")]
    LogSpec(String),
    /// A server could not start.
    #[error("cannot start the server")]
    Serve(#[from] vaultfleet_tlog::ServeError),
    /// The cosigner could not be opened.
    #[error("the cosigner")]
    Cosigner(#[from] vaultfleet_audit::cosigner::CosignerError),
    /// The served witness did not witness the submission.
    #[error("the submission")]
    Submit(#[from] vaultfleet_tlog::submit::SubmitError),
    /// The served log could not be fetched or does not hold together.
    #[error("the served log")]
    Walk(#[source] vaultfleet_tlog::walk::WalkError),
    /// The pins file does not parse.
    #[error("{}: the pins", path.display())]
    Pins {
        /// The pins file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: PinsError,
    },
}

impl CliError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// An HSM operation `what` failed.
    pub fn hsm(what: &'static str) -> impl FnOnce(HsmError) -> Self {
        move |source| Self::Hsm { what, source }
    }

    /// Encoding `what` failed.
    pub fn encode(what: &'static str) -> impl FnOnce(EncodeError) -> Self {
        move |source| Self::Encode { what, source }
    }
}
