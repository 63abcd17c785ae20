//! The sealed-store suite and the `Hsm` contract against SoftHSM2 over PKCS#11.
//!
//! Needs SoftHSM2 (`apt-get install -y softhsm2`); `.ci/run` installs it. The tests
//! never touch the machine's own tokens: they write a `softhsm2.conf` pointing at
//! a temporary token directory, set `SOFTHSM2_CONF` for this process and create a
//! throw-away token with `softhsm2-util --init-token`. Each test uses its own
//! range of group ids (a test may use its base plus a few), hence its own key and
//! counter labels on the shared token.
#![cfg(feature = "pkcs11")]

mod sealed;

use std::sync::OnceLock;

use vaultfleet::hsm::{
    softhsm2_throwaway_token, verify_signature, Counter, Hsm, HsmError, KeyKind, Pkcs11Hsm,
};

/// One throw-away token per test process (a PKCS#11 module is initialised once
/// per process).
fn hsm() -> Pkcs11Hsm {
    static HSM: OnceLock<(Pkcs11Hsm, tempfile::TempDir)> = OnceLock::new();
    HSM.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let hsm = softhsm2_throwaway_token(dir.path(), "vaultfleet-test", "1234")
            .unwrap_or_else(|e| panic!("{e}"));
        (hsm, dir)
    })
    .0
    .clone()
}

#[test]
fn seal_sign_mac_random_and_counter_on_softhsm2() {
    let hsm = hsm();
    let k = hsm.key("contract-aead", KeyKind::Aead).unwrap();
    assert_eq!(
        hsm.key("contract-aead", KeyKind::Aead).unwrap(),
        k,
        "found, not regenerated"
    );
    let sealed = hsm.seal(k, b"ad", b"backup key").unwrap();
    assert_eq!(&hsm.unseal(k, b"ad", &sealed).unwrap()[..], b"backup key");
    assert!(matches!(
        hsm.unseal(k, b"other ad", &sealed),
        Err(HsmError::Unauthentic)
    ));
    let mut flipped = sealed.clone();
    flipped[20] ^= 1;
    assert!(matches!(
        hsm.unseal(k, b"ad", &flipped),
        Err(HsmError::Unauthentic)
    ));
    assert_ne!(
        hsm.seal(k, b"ad", b"backup key").unwrap(),
        sealed,
        "fresh IV per seal"
    );

    let s = hsm.key("contract-sign", KeyKind::Signing).unwrap();
    let pk = hsm.public_key(s).unwrap();
    let sig = hsm.sign(s, b"fleet keys").unwrap();
    assert!(
        verify_signature(&pk, b"fleet keys", &sig),
        "SoftHSM2's Ed25519 verifies with dalek"
    );
    assert!(!verify_signature(&pk, b"other", &sig));

    let m = hsm.key("contract-mac", KeyKind::Mac).unwrap();
    let tag = hsm.mac(m, b"data").unwrap();
    assert!(hsm.verify_mac(m, b"data", &tag).unwrap());
    assert!(!hsm.verify_mac(m, b"datb", &tag).unwrap());
    assert!(matches!(hsm.sign(m, b"x"), Err(HsmError::WrongKey { .. })));

    let mut r = [0u8; 32];
    hsm.random(&mut r).unwrap();
    assert_ne!(r, [0u8; 32]);

    assert_eq!(hsm.counter("contract-counter").unwrap(), Counter::default());
    assert_eq!(
        hsm.advance_counter("contract-counter", &[7; 32]).unwrap(),
        1
    );
    assert_eq!(
        hsm.advance_counter("contract-counter", &[8; 32]).unwrap(),
        2
    );
    assert_eq!(
        hsm.counter("contract-counter").unwrap(),
        Counter {
            value: 2,
            binding: [8; 32]
        },
        "the newest value and its binding, the old object gone or outranked"
    );
    assert!(hsm.find_key("never-made", KeyKind::Aead).unwrap().is_none());
}

#[test]
fn round_trip_of_every_kind_of_write_and_no_plain_text_on_disk() {
    sealed::round_trip(hsm(), 110);
}

#[test]
fn a_flipped_byte_is_detected() {
    sealed::flipped_bytes_are_detected(hsm(), 120);
}

#[test]
fn swapped_or_edited_entries_are_detected() {
    sealed::swapped_and_edited_entries_are_detected(hsm(), 130);
}

#[test]
fn a_batch_from_another_replica_or_group_is_detected() {
    sealed::foreign_batches_are_detected(hsm(), 140);
}

#[test]
fn a_truncated_log_is_detected() {
    sealed::truncation_is_detected(hsm(), 150);
}

#[test]
fn an_older_disk_image_is_a_rollback() {
    sealed::rollback_is_detected(hsm(), 160);
}

#[test]
fn a_crash_at_every_step_of_a_write_recovers_without_loss_or_false_alarm() {
    sealed::crash_at_every_step(hsm(), 170);
}

#[test]
fn a_forked_image_is_a_rollback() {
    sealed::fork_is_detected(hsm(), 180);
}

#[test]
fn stale_records_put_back_are_detected() {
    sealed::stale_records_are_detected(hsm(), 190);
}

#[test]
fn a_head_from_another_replica_is_detected() {
    sealed::foreign_head_is_detected(hsm(), 200);
}

// Mutation tests (issue 13), as in tests/engine/sealed_storage.rs.

#[test]
fn mutant_sealed_verify_snapshot_refuses_clear_metadata_edited_alone() {
    sealed::snapshot_metadata_edited_alone_is_detected(hsm(), 210);
}

#[test]
fn mutant_sealed_verify_snapshot_refuses_a_snapshot_planted_under_a_head_without_one() {
    sealed::snapshot_planted_under_a_head_without_one_is_detected(hsm(), 220);
}

#[test]
fn mutant_sealed_log_bounds_refuses_an_offset_term_edited_alone() {
    sealed::offset_term_edited_alone_is_detected(hsm(), 230);
}

#[test]
fn mutant_sealed_verify_batch_names_where_a_batch_past_the_end_is_cut_short() {
    sealed::batch_header_past_the_end_is_cut_short(hsm(), 240);
}

#[test]
fn mutant_sealed_verify_batch_refuses_a_placeholder_given_data() {
    sealed::placeholder_given_data_is_detected(hsm(), 250);
}

#[test]
fn mutant_sealed_open_new_refuses_entries_a_snapshot_or_a_hard_state_without_a_head() {
    sealed::records_without_a_head_are_each_detected(hsm(), 260);
}
