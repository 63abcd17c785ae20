//! The operator's side of `POST /submit`: send a signed submission to a
//! served witness and read its receipt.

use std::time::Duration;

use vaultfleet::codec::EncodeError;
use vaultfleet_audit::submission::{Receipt, ReceiptError, SignedSubmission};

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
}

/// Sends `signed` to the witness at `url` and returns its receipt, checked to
/// be for exactly what was submitted.
pub async fn submit(url: &BaseUrl, signed: &SignedSubmission) -> Result<Receipt, SubmitError> {
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
    let (got, sent) = (&receipt.witnessed.statement, &signed.submission);
    if (got.namespace.as_str(), got.epoch, got.digest)
        != (sent.namespace.as_str(), sent.epoch, sent.digest)
    {
        return Err(SubmitError::WrongReceipt);
    }
    Ok(receipt)
}
