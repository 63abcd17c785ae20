//! The operator's side of `POST /submit`: send a signed submission to a
//! served witness and read its receipt.

use std::time::Duration;

use vaultfleet::codec::EncodeError;
use vaultfleet::hsm::verify_signature;
use vaultfleet_audit::note::{NoteVerifier, ALG_ED25519};
use vaultfleet_audit::submission::{Receipt, ReceiptError, SignedSubmission, SUBMISSION_SKEW_MAX};

use crate::client::{BaseUrl, HttpError};

/// How long the witness has to sign, publish and collect cosignatures.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest receipt read.
pub const RECEIPT_BYTES_MAX: usize = 4096;

/// A submission that did not come back witnessed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The submission does not encode (a namespace too long).
    #[error("the submission does not encode: {0}")]
    Encode(#[from] EncodeError),
    /// The exchange failed.
    #[error("{0}")]
    Http(#[from] HttpError),
    /// The witness refused (its message says why: 401 not the pinned
    /// operator key, 409 the witness's rules, 422 the clocks differ).
    #[error("the witness refused with status {status}: {message}")]
    Refused {
        /// The status.
        status: u16,
        /// Its message (at most 300 characters of it).
        message: String,
    },
    /// The receipt does not parse.
    #[error("the witness's receipt: {0}")]
    Receipt(#[from] ReceiptError),
    /// The receipt is for another statement than the one submitted.
    #[error("the witness's receipt is for another statement than the one submitted")]
    WrongReceipt,
    /// The receipt's signature is not by a pinned witness key, or does not
    /// verify: countersigning it would approve whatever that signature signs.
    #[error("the witness's receipt is not signed by a pinned witness key ({key:?}): refusing to countersign it")]
    ReceiptNotSigned {
        /// The key the receipt names.
        key: String,
    },
    /// The receipt's time is too far from when the submission was sent.
    #[error("the witness signed at {timestamp}, the submission was sent at {sent_at}: more than {SUBMISSION_SKEW_MAX} s apart")]
    ReceiptTime {
        /// The receipt's timestamp.
        timestamp: u64,
        /// The submission's send time.
        sent_at: u64,
    },
}

/// Sends `signed` to the witness at `url` and returns its receipt, checked to
/// be for exactly what was submitted, signed by one of `witness_keys` (the
/// witness's pinned Ed25519 keys, as `vaultfleet witness vkey` prints them)
/// and dated within [`SUBMISSION_SKEW_MAX`] of the send time. Only such a
/// receipt may be countersigned: the countersignature covers the witness's
/// signature bytes, so it approves whatever they sign.
pub async fn submit(
    url: &BaseUrl,
    signed: &SignedSubmission,
    witness_keys: &[NoteVerifier],
) -> Result<Receipt, SubmitError> {
    let answer = url
        .post(
            "/submit",
            "application/octet-stream",
            signed.encode()?,
            RECEIPT_BYTES_MAX,
            SUBMIT_TIMEOUT,
        )
        .await?;
    let text = answer.text().unwrap_or("(not text)");
    if answer.status != 200 {
        return Err(SubmitError::Refused {
            status: answer.status,
            message: text.trim_end().chars().take(300).collect(),
        });
    }
    let receipt = Receipt::parse(text)?;
    check_receipt(&receipt, signed, witness_keys)?;
    Ok(receipt)
}

/// The checks [`submit`] makes of a receipt: for what was submitted, signed by
/// a pinned witness key, and dated near the send time.
pub fn check_receipt(
    receipt: &Receipt,
    signed: &SignedSubmission,
    witness_keys: &[NoteVerifier],
) -> Result<(), SubmitError> {
    let w = &receipt.witnessed;
    let (got, sent) = (&w.statement, &signed.submission);
    if (got.namespace.as_str(), got.epoch, got.digest)
        != (sent.namespace.as_str(), sent.epoch, sent.digest)
    {
        return Err(SubmitError::WrongReceipt);
    }
    let message = got.signed_bytes()?;
    let signed_by_pin = witness_keys.iter().any(|k| {
        k.alg == ALG_ED25519
            && k.name == w.key
            && verify_signature(&k.public_key, &message, &w.signature)
    });
    if !signed_by_pin {
        return Err(SubmitError::ReceiptNotSigned { key: w.key.clone() });
    }
    if got.timestamp.abs_diff(sent.sent_at) > SUBMISSION_SKEW_MAX {
        return Err(SubmitError::ReceiptTime {
            timestamp: got.timestamp,
            sent_at: sent.sent_at,
        });
    }
    Ok(())
}
