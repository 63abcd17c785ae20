//! Regression tests of the attacker review of issue 16 (named after its
//! findings): a malicious witness against the operator's `submit`, a lying
//! log against the auditor's walk, and a log configured with one cosigner
//! twice. The servers here are tiny raw-HTTP stand-ins on 127.0.0.1 that
//! answer whatever the attack needs; each test bounds its own time.

// A test of hostile servers on real sockets uses a thread and the clock.
#![allow(clippy::disallowed_methods)]

use crate::common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{artifact, now, open_witness, sign_checkpoint, submission, url_of, NS, WITNESS_KEY};
use vaultfleet::hsm::{Hsm, KeyKind, SoftHsm};
use vaultfleet_audit::note::NoteVerifier;
use vaultfleet_audit::submission::Receipt;
use vaultfleet_audit::witness::leaf_bytes;
use vaultfleet_audit::Witness;
use vaultfleet_tlog::submit::{submit, SubmitError};
use vaultfleet_tlog::walk::{block_on, fetch_verified_log, WalkError};
use vaultfleet_tlog::{BaseUrl, CosignerEndpoint, LogConfig, LogServer, ServeError};

/// A raw HTTP server on 127.0.0.1 answering every request with
/// `answer(path)`, counting requests; it serves until the test process ends.
fn serve(answer: impl Fn(&str) -> (u16, Vec<u8>) + Send + 'static) -> (BaseUrl, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            while n < buf.len() {
                let Ok(m) = s.read(&mut buf[n..]) else { break };
                if m == 0 {
                    break;
                }
                n += m;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            h.fetch_add(1, Ordering::SeqCst);
            let (status, body) = answer(&path);
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = s.write_all(&body);
        }
    });
    (url_of(addr), hits)
}

/// The witness's soft HSM.
fn witness_hsm() -> SoftHsm {
    SoftHsm::from_seed(0x51)
}

/// The witness (its log in `dir`) and its key as a client pins it.
fn witness(dir: &std::path::Path) -> (Witness<SoftHsm>, NoteVerifier) {
    let w = open_witness(witness_hsm(), &dir.join("w.state"));
    let key = NoteVerifier::ed25519(WITNESS_KEY, w.public_key(WITNESS_KEY).unwrap()).unwrap();
    (w, key)
}

/// R1-H1: a malicious witness signs (and logs) its own digest for the epoch
/// and answers the operator's submission with a receipt that names the
/// submitted digest but carries the signature over its own. Countersigning
/// that would approve the witness's fleet; `submit` must refuse the receipt.
#[test]
fn r1_h1_a_receipt_whose_signature_is_over_another_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, key) = witness(dir.path());
    let operator = SoftHsm::from_seed(0x52);
    let good = artifact(1, 1);
    let evil = artifact(1, 0x33);
    let evil_w = w.sign(NS, 1, evil.digest().unwrap(), now()).unwrap();
    let mut lie = evil_w.clone();
    lie.statement.digest = good.digest().unwrap();
    let body = Receipt { witnessed: lie }.encode().into_bytes();
    let (url, _) = serve(move |_| (200, body.clone()));
    let signed = submission(&operator, 1, good.digest().unwrap());
    match block_on(submit(&url, &signed, std::slice::from_ref(&key))).unwrap() {
        Err(SubmitError::ReceiptNotSigned { key }) => assert_eq!(key, "witness-1"),
        other => panic!("a receipt signed over another digest: {other:?}"),
    }
    // An honest receipt from a key nobody pinned is refused the same way.
    let honest = w
        .sign(NS, 2, artifact(2, 1).digest().unwrap(), now())
        .unwrap();
    let body = Receipt { witnessed: honest }.encode().into_bytes();
    let (url, _) = serve(move |_| (200, body.clone()));
    let signed = submission(&operator, 2, artifact(2, 1).digest().unwrap());
    let stranger = NoteVerifier::ed25519("witness-1", [9; 32]).unwrap();
    assert!(matches!(
        block_on(submit(&url, &signed, &[stranger])).unwrap(),
        Err(SubmitError::ReceiptNotSigned { .. })
    ));
    // ... and accepted under the pinned key.
    block_on(submit(&url, &signed, &[key])).unwrap().unwrap();
}

/// R1-M2: a checkpoint nobody pinned signed, claiming 2^62 entries, made the
/// walk fetch (and keep) entry bundles without end. Now the signature is
/// checked first (one request), and a signed one above the limit is refused
/// before any tile.
#[test]
fn r1_m2_an_unsigned_or_oversized_checkpoint_costs_one_request_not_a_walk() {
    let leaf = leaf_bytes(
        &vaultfleet_audit::Statement {
            namespace: NS.into(),
            timestamp: 1,
            epoch: 1,
            digest: [7; 32],
        },
        "witness-1",
        &[0u8; 64],
    )
    .unwrap();
    let mut bundle = Vec::new();
    for _ in 0..256 {
        bundle.extend_from_slice(&(leaf.len() as u16).to_be_bytes());
        bundle.extend_from_slice(&leaf);
    }
    let root = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let cp = format!("{NS}\n4611686018427387904\n{root}\n\n\u{2014} mallory AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
    let (url, hits) = serve(move |p| {
        if p.ends_with("/checkpoint") {
            (200, cp.clone().into_bytes())
        } else {
            (200, bundle.clone())
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (w, key) = witness(dir.path());
    let r = block_on(fetch_verified_log(
        &url,
        NS,
        std::slice::from_ref(&key),
        1000,
    ))
    .unwrap();
    assert!(matches!(r, Err(WalkError::Unsigned)), "{r:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Signed by the pinned key, but larger than the caller accepts.
    let note = sign_checkpoint(&witness_hsm(), 5000, &[0; 32]).encode();
    drop(w);
    let (url, hits) = serve(move |_| (200, note.clone().into_bytes()));
    let r = block_on(fetch_verified_log(&url, NS, &[key], 1000)).unwrap();
    assert!(
        matches!(
            r,
            Err(WalkError::TooLarge {
                size: 5000,
                max: 1000
            })
        ),
        "{r:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// R1-7: one cosigner listed twice (same name, or the same key ID) is a
/// configuration error, not two cosignatures' worth of trust.
#[test]
fn r1_7_a_log_refuses_a_cosigner_listed_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = witness(dir.path());
    let c = SoftHsm::from_seed(0x61);
    let pk = c.public_key(c.key("c", KeyKind::Signing).unwrap()).unwrap();
    let key = NoteVerifier::cosignature("cosigner-1.example", pk).unwrap();
    let url = BaseUrl::parse("http://127.0.0.1:9").unwrap();
    let mut config = LogConfig::new("127.0.0.1:0".parse().unwrap(), [1; 32]);
    config.cosigners = vec![
        CosignerEndpoint {
            url: url.clone(),
            key: key.clone(),
        },
        CosignerEndpoint { url, key },
    ];
    match LogServer::start(w, config) {
        Err(ServeError::DuplicateCosigner(name)) => assert_eq!(name, "cosigner-1.example"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a cosigner listed twice was accepted"),
    }
}
