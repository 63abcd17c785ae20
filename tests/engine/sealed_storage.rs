//! `Sealed<SledLog, SoftHsm>`: tampering, rollback and crash recovery on a hostile
//! disk, and a three-replica fleet on sealed stores that survives restarts. The
//! same suite runs against SoftHSM2 over PKCS#11 in `tests/sealed_pkcs11.rs`.

use crate::harness;
use crate::sealed;

use harness::{get, put, Fleet, Store};
use vaultfleet::SoftHsm;

#[test]
fn round_trip_of_every_kind_of_write_and_no_plain_text_on_disk() {
    sealed::round_trip(SoftHsm::from_seed(1), 1);
}

#[test]
fn a_flipped_byte_is_detected() {
    sealed::flipped_bytes_are_detected(SoftHsm::from_seed(2), 2);
}

#[test]
fn swapped_or_edited_entries_are_detected() {
    sealed::swapped_and_edited_entries_are_detected(SoftHsm::from_seed(3), 3);
}

#[test]
fn a_batch_from_another_replica_or_group_is_detected() {
    sealed::foreign_batches_are_detected(SoftHsm::from_seed(4), 4);
}

#[test]
fn a_truncated_log_is_detected() {
    sealed::truncation_is_detected(SoftHsm::from_seed(5), 5);
}

#[test]
fn an_old_version_byte_in_a_current_store_is_tampering() {
    sealed::old_version_byte_in_a_current_store_is_tampering(SoftHsm::from_seed(13), 13);
}

#[test]
fn an_older_disk_image_is_a_rollback() {
    sealed::rollback_is_detected(SoftHsm::from_seed(6), 6);
}

#[test]
fn a_forked_image_is_a_rollback() {
    sealed::fork_is_detected(SoftHsm::from_seed(9), 9);
}

#[test]
fn stale_records_put_back_are_detected() {
    sealed::stale_records_are_detected(SoftHsm::from_seed(10), 10);
}

#[test]
fn a_head_from_another_replica_is_detected() {
    sealed::foreign_head_is_detected(SoftHsm::from_seed(11), 11);
}

#[test]
fn damage_to_sleds_own_files_never_panics_nor_serves_bad_data() {
    let seed = std::env::var("VAULTFLEET_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f11e);
    sealed::raw_file_damage_never_serves_bad_data(SoftHsm::from_seed(12), 12, seed);
}

#[test]
fn a_store_opened_against_another_hsm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    sealed::write_history(dir.path(), &SoftHsm::from_seed(13), 13, 1, 3);
    match sealed::open(dir.path(), &SoftHsm::from_seed(14), 13, 1) {
        Err(vaultfleet::StorageError::Hsm(vaultfleet::HsmError::NoSuchKey { .. })) => {}
        Err(e) => panic!("expected a missing key, got {e}"),
        Ok(_) => panic!("opened with another HSM"),
    }
}

#[test]
fn a_crash_at_every_step_of_a_write_recovers_without_loss_or_false_alarm() {
    sealed::crash_at_every_step(SoftHsm::from_seed(7), 7);
}

#[test]
fn an_hsm_outage_stops_the_store_without_loss() {
    let hsm = SoftHsm::from_seed(8);
    let switch = hsm.clone();
    sealed::hsm_outage_stops_the_store(hsm, 8, &move |on| switch.set_available(on));
}

#[test]
fn three_replica_fleet_on_sealed_sled_survives_a_restart_of_every_replica() {
    let mut fleet = Fleet::start(&[(1, "dc-a"), (2, "dc-b"), (3, "dc-c")], Store::SealedSled);
    fleet.wait_leader();
    let client = fleet.client();
    for i in 0..50 {
        put(&client, &format!("k{i}"), &format!("v{i}"));
    }
    for id in [1, 2, 3] {
        fleet.stop(id);
        fleet.restart(id);
        fleet.wait_leader();
        put(&fleet.client(), &format!("after-restart-{id}"), "x");
    }
    // All three down at once, then all back.
    for id in [1, 2, 3] {
        fleet.stop(id);
    }
    for id in [1, 2, 3] {
        fleet.restart(id);
    }
    fleet.wait_leader();
    let client = fleet.client();
    for i in 0..50 {
        assert_eq!(
            get(&client, &format!("k{i}")),
            Some(format!("v{i}").into_bytes())
        );
    }
    for id in [1, 2, 3] {
        assert_eq!(
            get(&client, &format!("after-restart-{id}")),
            Some(b"x".to_vec())
        );
    }
}

// Mutation tests (issue 13): each kills a cargo-mutants survivor of the open path.

#[test]
fn mutant_sealed_verify_snapshot_refuses_clear_metadata_edited_alone() {
    sealed::snapshot_metadata_edited_alone_is_detected(SoftHsm::from_seed(21), 21);
}

#[test]
fn mutant_sealed_verify_snapshot_refuses_a_snapshot_planted_under_a_head_without_one() {
    sealed::snapshot_planted_under_a_head_without_one_is_detected(SoftHsm::from_seed(22), 22);
}

#[test]
fn mutant_sealed_log_bounds_refuses_an_offset_term_edited_alone() {
    sealed::offset_term_edited_alone_is_detected(SoftHsm::from_seed(23), 23);
}

#[test]
fn mutant_sealed_verify_batch_names_where_a_batch_past_the_end_is_cut_short() {
    sealed::batch_header_past_the_end_is_cut_short(SoftHsm::from_seed(24), 24);
}

#[test]
fn mutant_sealed_verify_batch_refuses_a_placeholder_given_data() {
    sealed::placeholder_given_data_is_detected(SoftHsm::from_seed(25), 25);
}

#[test]
fn mutant_sealed_open_new_refuses_entries_a_snapshot_or_a_hard_state_without_a_head() {
    sealed::records_without_a_head_are_each_detected(SoftHsm::from_seed(26), 26);
}
