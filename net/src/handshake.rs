//! The Noise IK handshake that turns a TCP connection into an authenticated,
//! encrypted session between two processes of one fleet.
//!
//! ```text
//! prologue = labeled("vaultfleet-net/handshake/v1", [protocol version (u32 BE), fleet id])
//! -> e, es, s, ss  + payload: Hello { version, frame limit, initiator's replica ids }
//! <- e, ee, se     + payload: Hello { version, frame limit, responder's replica ids }
//! ```
//!
//! The initiator knows the responder's static key from the directory (IK). The
//! responder learns the initiator's static key from the first message and looks
//! it up in the directory *before* decoding its payload: an unpinned key is
//! refused and the connection closed. A peer of another fleet or protocol
//! version has another prologue, so the first message does not even decrypt.
//! The hello also states the sender's [`Role`]: the responder looks the key up
//! as a peer key or as a client key, and refuses a hello claiming the other
//! role (a client key is never accepted as a peer, nor a peer key as a client).
//!
//! A claimed replica id that is not pinned to the proved key is ignored (and
//! counted by the caller): frames are bound to keys by their per-frame `from`
//! check, so a stale or unknown claim refuses nothing else the peer hosts.
//!
//! The payloads carry only a [`Hello`]; no application data rides in the
//! handshake, so a replayed first message (which IK cannot detect) yields its
//! replayer nothing: finishing the handshake needs the initiator's ephemeral and
//! static private keys.

use std::collections::BTreeSet;

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use vaultfleet::codec::labeled;
use vaultfleet::ReplicaId;

use crate::directory::PeerDirectory;
use crate::error::HandshakeError;
use crate::keys::PublicKey;
use crate::wire::hello::{Hello, HelloRole};
use crate::wire::record::{put_record, NOISE_MESSAGE_BYTES_MAX};

/// The Noise protocol name: IK, X25519, ChaCha20-Poly1305, BLAKE2s.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// The domain-separation label of the prologue.
pub const PROLOGUE_LABEL: &[u8] = b"vaultfleet-net/handshake/v1";

/// The prologue both sides mix into the handshake: a peer of another fleet or
/// protocol version computes another one and the handshake fails.
pub fn prologue(directory: &PeerDirectory) -> Vec<u8> {
    labeled(
        PROLOGUE_LABEL,
        &[
            &directory.protocol_version().to_be_bytes(),
            directory.fleet_id().as_bytes(),
        ],
    )
}

/// What the other end of a session is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A process hosting replicas: raft frames.
    Peer,
    /// A client process: client requests (`docs/network.md`, "Remote clients").
    Client,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Peer => "peer",
            Role::Client => "client",
        })
    }
}

/// An authenticated session: the Noise transport state and who the peer is.
pub struct Session {
    /// The Noise transport state (both directions' ciphers and nonces).
    pub noise: snow::TransportState,
    /// The static key the peer proved.
    pub remote_key: PublicKey,
    /// The replica ids the peer claimed that are pinned to its key (none for
    /// a client).
    pub remote_ids: BTreeSet<ReplicaId>,
    /// Claimed ids ignored because they are not pinned to the peer's key.
    pub claims_ignored: usize,
    /// The largest frame body the peer accepts: send at most
    /// `min(own limit, this)`.
    pub frame_bytes_max: usize,
    /// The role the peer's key is pinned for, and its hello claimed.
    pub role: Role,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("remote_key", &self.remote_key)
            .field("remote_ids", &self.remote_ids)
            .field("role", &self.role)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .finish_non_exhaustive()
    }
}

/// The handshake messages as sent and received (tests record them to replay).
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    /// Messages this side wrote, in order.
    pub sent: Vec<Vec<u8>>,
    /// Messages this side read, in order.
    pub received: Vec<Vec<u8>>,
}

fn params() -> Result<snow::params::NoiseParams, HandshakeError> {
    NOISE_PARAMS.parse().map_err(HandshakeError::Noise)
}

async fn read_record<R: AsyncRead + Unpin>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
) -> Result<BytesMut, HandshakeError> {
    match reader.next().await {
        None => Err(HandshakeError::Closed),
        Some(Err(e)) => Err(HandshakeError::Io(e)),
        Some(Ok(record)) => Ok(record),
    }
}

async fn write_record<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &[u8],
) -> Result<(), HandshakeError> {
    let mut out = BytesMut::new();
    put_record(&mut out, message);
    writer.write_all(&out).await.map_err(HandshakeError::Io)
}

/// What a checked hello says.
struct Checked {
    ids: BTreeSet<ReplicaId>,
    claims_ignored: usize,
    frame_bytes_max: usize,
}

/// Checks a peer's hello against the directory: same version, the role the
/// key is pinned for; keeps the claimed ids pinned to the key the peer proved
/// and counts the others (ignored).
fn check_hello(
    directory: &PeerDirectory,
    key: PublicKey,
    pinned: Role,
    payload: &[u8],
) -> Result<Checked, HandshakeError> {
    let hello = Hello::decode(payload).map_err(HandshakeError::Hello)?;
    if hello.version != directory.protocol_version() {
        return Err(HandshakeError::Version {
            ours: directory.protocol_version(),
            theirs: hello.version,
        });
    }
    let frame_bytes_max = usize::try_from(hello.frame_bytes_max).unwrap_or(usize::MAX);
    let claimed = match (pinned, hello.role) {
        (Role::Peer, HelloRole::Peer { ids }) => ids,
        (Role::Client, HelloRole::Client) => {
            return Ok(Checked {
                ids: BTreeSet::new(),
                claims_ignored: 0,
                frame_bytes_max,
            })
        }
        (pinned, HelloRole::Peer { .. }) => {
            return Err(HandshakeError::RoleMismatch {
                key,
                pinned,
                claimed: Role::Peer,
            })
        }
        (pinned, HelloRole::Client) => {
            return Err(HandshakeError::RoleMismatch {
                key,
                pinned,
                claimed: Role::Client,
            })
        }
    };
    let claimed_count = claimed.len();
    let ids: BTreeSet<ReplicaId> = claimed
        .into_iter()
        .filter(|&id| directory.key_of(id) == Some(key) && !directory.is_local(id))
        .collect();
    Ok(Checked {
        claims_ignored: claimed_count - ids.len(),
        ids,
        frame_bytes_max,
    })
}

fn own_hello(directory: &PeerDirectory, frame_bytes_max: usize) -> Vec<u8> {
    let role = if directory.is_client() {
        HelloRole::Client
    } else {
        HelloRole::Peer {
            ids: directory.local_ids().clone(),
        }
    };
    Hello {
        version: directory.protocol_version(),
        frame_bytes_max: u32::try_from(frame_bytes_max).unwrap_or(u32::MAX),
        role,
    }
    .encode()
}

/// The Noise handshake of this process's static key: the initiator's against
/// `remote` when given, else the responder's.
fn handshake_state(
    directory: &PeerDirectory,
    remote: Option<PublicKey>,
) -> Result<snow::HandshakeState, HandshakeError> {
    let prologue = prologue(directory);
    let builder = snow::Builder::new(params()?)
        .local_private_key(directory.secret().expose())
        .prologue(&prologue);
    match remote {
        Some(remote) => builder
            .remote_public_key(remote.as_bytes())
            .build_initiator(),
        None => builder.build_responder(),
    }
    .map_err(HandshakeError::Noise)
}

/// Writes this side's hello as the next handshake message; returns the record
/// sent.
async fn send_hello<W: AsyncWrite + Unpin>(
    hs: &mut snow::HandshakeState,
    writer: &mut W,
    directory: &PeerDirectory,
    frame_bytes_max: usize,
) -> Result<Vec<u8>, HandshakeError> {
    let mut message = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let n = hs
        .write_message(&own_hello(directory, frame_bytes_max), &mut message)
        .map_err(HandshakeError::Noise)?;
    message.truncate(n);
    write_record(writer, &message).await?;
    Ok(message)
}

/// Reads the next handshake message, `record`; returns its payload.
fn read_hello(hs: &mut snow::HandshakeState, record: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut payload = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let n = hs
        .read_message(record, &mut payload)
        .map_err(HandshakeError::Noise)?;
    payload.truncate(n);
    Ok(payload)
}

/// The static key the other side proved (all zeroes if it proved none).
fn remote_static(hs: &snow::HandshakeState) -> PublicKey {
    hs.get_remote_static()
        .and_then(PublicKey::from_slice)
        .unwrap_or(PublicKey::from_bytes([0; 32]))
}

/// Runs the initiator's side against the process pinned to `remote`,
/// announcing `frame_bytes_max` (the largest frame body this side accepts).
pub async fn initiate<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut W,
    directory: &PeerDirectory,
    remote: PublicKey,
    frame_bytes_max: usize,
    mut transcript: Option<&mut Transcript>,
) -> Result<Session, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hs = handshake_state(directory, Some(remote))?;
    let message = send_hello(&mut hs, writer, directory, frame_bytes_max).await?;
    if let Some(t) = transcript.as_deref_mut() {
        t.sent.push(message);
    }
    let reply = read_record(reader).await?;
    if let Some(t) = transcript {
        t.received.push(reply.to_vec());
    }
    let payload = read_hello(&mut hs, &reply)?;
    let found = remote_static(&hs);
    if found != remote {
        return Err(HandshakeError::WrongResponderKey {
            expected: remote,
            found,
        });
    }
    // Only a peer process answers a handshake.
    let checked = check_hello(directory, remote, Role::Peer, &payload)?;
    let noise = hs.into_transport_mode().map_err(HandshakeError::Noise)?;
    Ok(Session {
        noise,
        remote_key: remote,
        remote_ids: checked.ids,
        claims_ignored: checked.claims_ignored,
        frame_bytes_max: checked.frame_bytes_max,
        role: Role::Peer,
    })
}

/// Runs the responder's side: refuses any initiator whose static key is not
/// pinned to a peer replica or allowed as a client, before decoding anything
/// it sent, and one whose hello claims the other role. Announces
/// `frame_bytes_max` (the largest frame body this side accepts).
pub async fn respond<R, W>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    writer: &mut W,
    directory: &PeerDirectory,
    frame_bytes_max: usize,
) -> Result<Session, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hs = handshake_state(directory, None)?;
    let first = read_record(reader).await?;
    let payload = read_hello(&mut hs, &first)?;
    let key = remote_static(&hs);
    // The pin check comes before the payload is decoded; the pin says which
    // role the key may take. A peer key also allowed as a (service) client's
    // takes the role its hello claims (a node's vault service dialing a peer).
    let role = match (
        directory.is_pinned_peer(&key),
        directory.is_pinned_client(&key),
    ) {
        (true, true) => match Hello::decode(&payload).map(|h| h.role) {
            Ok(HelloRole::Client) => Role::Client,
            // A hello that does not decode is refused by `check_hello`.
            _ => Role::Peer,
        },
        (true, false) => Role::Peer,
        (false, true) => Role::Client,
        (false, false) => return Err(HandshakeError::UnpinnedKey(key)),
    };
    let checked = check_hello(directory, key, role, &payload)?;
    send_hello(&mut hs, writer, directory, frame_bytes_max).await?;
    let noise = hs.into_transport_mode().map_err(HandshakeError::Noise)?;
    Ok(Session {
        noise,
        remote_key: key,
        remote_ids: checked.ids,
        claims_ignored: checked.claims_ignored,
        frame_bytes_max: checked.frame_bytes_max,
        role,
    })
}
