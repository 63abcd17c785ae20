//! The operator's submission of an epoch to a served witness, and the
//! witness's receipt.
//!
//! A witness that serves its log over HTTP (`vaultfleet witness serve`) signs
//! only what the operator asks, and only when the request is signed by the
//! operator's pinned key: anyone can read the log, only the operator writes to
//! it. A [`SignedSubmission`] names the namespace, the epoch, the artifact's
//! digest and when it was sent; the witness refuses one sent too far from its
//! own time ([`SignedSubmission::verify`]), so a captured request cannot be
//! held back and delivered much later. Replaying one within that window gains
//! nothing: the witness's rules sign an epoch and a digest once, so the replay
//! is refused as already signed. The witness signs with its own clock, never
//! the request's.
//!
//! The submission does not name the witness: the same request delivered to
//! another witness that pins the same operator key logs the same statement
//! there, which publishes what the operator asked to publish.

use crate::witness::{parse_log, Witnessed, NAME_BYTES_MAX};
use vaultfleet::codec::{labeled, DecodeError, EncodeError, Reader, Writer};
use vaultfleet::hsm::{verify_signature, Hsm, HsmError, KeyKind};

const MAGIC: &[u8] = b"vaultfleet/witness-submission/v1";
const SIGNED_LABEL: &[u8] = b"vaultfleet/witness-submission/v1";
/// The encoded size of every submission is below this.
pub const SUBMISSION_BYTES_MAX: usize = 1024;
/// How far a submission's send time may be from the witness's time, in
/// seconds, either way.
pub const SUBMISSION_SKEW_MAX: u64 = 300;

/// What the operator asks the witness to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The operator's log.
    pub namespace: String,
    /// The fleet epoch.
    pub epoch: u64,
    /// The fleet artifact's digest.
    pub digest: [u8; 32],
    /// When the operator sent it (seconds since the Unix epoch).
    pub sent_at: u64,
}

impl Submission {
    /// The bytes the operator signs (domain-separated, every field length-prefixed).
    pub fn signed_bytes(&self) -> Vec<u8> {
        labeled(
            SIGNED_LABEL,
            &[
                self.namespace.as_bytes(),
                &self.epoch.to_be_bytes(),
                &self.digest,
                &self.sent_at.to_be_bytes(),
            ],
        )
    }

    /// Signs it with the operator's HSM key `label`.
    pub fn sign<H: Hsm>(self, hsm: &H, label: &str) -> Result<SignedSubmission, HsmError> {
        let key = hsm.key(label, KeyKind::Signing)?;
        let signature = hsm.sign(key, &self.signed_bytes())?;
        Ok(SignedSubmission {
            submission: self,
            signature,
        })
    }
}

/// A submission and the operator's signature on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedSubmission {
    /// What is asked.
    pub submission: Submission,
    /// Ed25519 by the operator's key over [`Submission::signed_bytes`].
    pub signature: [u8; 64],
}

/// A submission the witness does not act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmissionError {
    /// The bytes do not decode as a submission.
    #[error("malformed submission: {0}")]
    Malformed(#[from] DecodeError),
    /// The namespace is too long to be signed.
    #[error("the submission does not encode: {0}")]
    Encode(#[from] EncodeError),
    /// The signature is not the pinned operator key's.
    #[error("the submission is not signed by the pinned operator key")]
    NotOperator,
    /// Sent too far from the witness's time.
    #[error("the submission was sent at {sent_at}, the witness's time is {now}: at most {SUBMISSION_SKEW_MAX} s apart are accepted (check both clocks)")]
    Stale {
        /// Its send time.
        sent_at: u64,
        /// The witness's time.
        now: u64,
    },
}

impl SignedSubmission {
    /// The wire form: magic, namespace (`u8` length), epoch, digest, send
    /// time, signature.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let s = &self.submission;
        let mut w = Writer::from_vec(MAGIC.to_vec());
        w.short_text(&s.namespace, "submission namespace")?
            .u64(s.epoch)
            .raw(&s.digest)
            .u64(s.sent_at)
            .raw(&self.signature);
        Ok(w.into_vec())
    }

    /// Decodes [`SignedSubmission::encode`]'s output; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, SubmissionError> {
        let mut r = Reader::new(bytes);
        r.magic(MAGIC, "submission magic")?;
        let namespace = r.short_text("submission namespace")?.to_owned();
        let epoch = r.u64("submission epoch")?;
        let digest = r.array("submission digest")?;
        let sent_at = r.u64("submission send time")?;
        let signature = r.array("submission signature")?;
        r.expect_empty("submission")?;
        Ok(Self {
            submission: Submission {
                namespace,
                epoch,
                digest,
                sent_at,
            },
            signature,
        })
    }

    /// Checks the operator's signature, then the send time against `now`.
    /// The signature comes first, so nobody without the operator's key learns
    /// anything about the witness's clock.
    pub fn verify(&self, operator_key: &[u8; 32], now: u64) -> Result<(), SubmissionError> {
        if !verify_signature(
            operator_key,
            &self.submission.signed_bytes(),
            &self.signature,
        ) {
            return Err(SubmissionError::NotOperator);
        }
        let sent_at = self.submission.sent_at;
        if sent_at.abs_diff(now) > SUBMISSION_SKEW_MAX {
            return Err(SubmissionError::Stale { sent_at, now });
        }
        Ok(())
    }
}

/// The witness's answer to an accepted submission: the statement as its log
/// holds it (one line of the log's text form) and its leaf index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// What was signed, by which key, and where the log holds it.
    pub witnessed: Witnessed,
}

/// A receipt that does not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Not `LOG-LINE\nleaf N\n`.
    #[error("malformed receipt: expected a log line then `leaf N`")]
    Malformed,
    /// The log line does not parse.
    #[error("the receipt's log line: {0}")]
    Line(#[from] crate::witness::LogError),
}

impl Receipt {
    /// The text form: the statement's log line, then `leaf N`.
    pub fn encode(&self) -> String {
        let w = &self.witnessed;
        let s = &w.statement;
        format!(
            "{} {} {} {} {} {}\nleaf {}\n",
            s.namespace,
            s.epoch,
            hex(&s.digest),
            s.timestamp,
            w.key,
            hex(&w.signature),
            w.leaf_index
        )
    }

    /// Parses [`Receipt::encode`]'s output.
    pub fn parse(text: &str) -> Result<Self, ReceiptError> {
        let (line, rest) = text.split_once('\n').ok_or(ReceiptError::Malformed)?;
        if line.len() > 4 * NAME_BYTES_MAX {
            return Err(ReceiptError::Malformed);
        }
        let leaf_index = rest
            .strip_prefix("leaf ")
            .and_then(|r| r.strip_suffix('\n'))
            .filter(|n| crate::note::canonical_decimal(n))
            .and_then(|n| n.parse().ok())
            .ok_or(ReceiptError::Malformed)?;
        let mut parsed = parse_log(line)?;
        let mut witnessed = parsed.pop().ok_or(ReceiptError::Malformed)?;
        if !parsed.is_empty() {
            return Err(ReceiptError::Malformed);
        }
        witnessed.leaf_index = leaf_index;
        Ok(Self { witnessed })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::witness::Statement;
    use vaultfleet::hsm::SoftHsm;

    fn signed(hsm: &SoftHsm, sent_at: u64) -> SignedSubmission {
        Submission {
            namespace: "example.vault.fleet_keys.v1".into(),
            epoch: 3,
            digest: [7; 32],
            sent_at,
        }
        .sign(hsm, "operator/countersign")
        .unwrap()
    }

    #[test]
    fn a_submission_round_trips_and_only_the_operators_fresh_one_verifies() {
        let hsm = SoftHsm::from_seed(11);
        let key = hsm
            .public_key(hsm.key("operator/countersign", KeyKind::Signing).unwrap())
            .unwrap();
        let s = signed(&hsm, 1_000);
        let bytes = s.encode().unwrap();
        assert!(bytes.len() < SUBMISSION_BYTES_MAX);
        let back = SignedSubmission::decode(&bytes).unwrap();
        assert_eq!(back, s);
        back.verify(&key, 1_000 + SUBMISSION_SKEW_MAX).unwrap();
        back.verify(&key, 1_000 - SUBMISSION_SKEW_MAX).unwrap();
        assert!(matches!(
            back.verify(&key, 1_001 + SUBMISSION_SKEW_MAX),
            Err(SubmissionError::Stale { .. })
        ));
        // Another key's signature.
        let other = SoftHsm::from_seed(12);
        assert!(matches!(
            signed(&other, 1_000).verify(&key, 1_000),
            Err(SubmissionError::NotOperator)
        ));
        // Every field is signed: each edit is refused.
        let fields: [fn(&mut Submission); 4] = [
            |s| s.namespace.push('x'),
            |s| s.epoch += 1,
            |s| s.digest[0] ^= 1,
            |s| s.sent_at += 1,
        ];
        for edit in fields {
            let mut t = s.clone();
            edit(&mut t.submission);
            assert!(matches!(
                t.verify(&key, 1_000),
                Err(SubmissionError::NotOperator)
            ));
        }
        // Trailing bytes, truncation and another magic are refused.
        let mut long = bytes.clone();
        long.push(0);
        assert!(SignedSubmission::decode(&long).is_err());
        assert!(SignedSubmission::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert!(SignedSubmission::decode(&magic).is_err());
    }

    #[test]
    fn a_receipt_round_trips_and_malformed_ones_are_refused() {
        let r = Receipt {
            witnessed: Witnessed {
                statement: Statement {
                    namespace: "ns".into(),
                    timestamp: 5,
                    epoch: 2,
                    digest: [1; 32],
                },
                key: "witness-1".into(),
                signature: [2; 64],
                leaf_index: 9,
            },
        };
        assert_eq!(Receipt::parse(&r.encode()).unwrap(), r);
        let text = r.encode();
        for bad in [
            text.replace("leaf 9", "leaf"),
            text.replace("leaf 9", "leaf -9"),
            text.replace("leaf 9", "leaf 09"),
            text.replace("leaf 9", "leaf +9"),
            text.replace("\nleaf 9\n", "\nleaf 9"),
            format!("{text}{text}"),
            text.replacen(" 2 ", " x ", 1),
        ] {
            assert!(Receipt::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
