//! The PKCS#11 counter against a holder of the user PIN (issue 13, finding 6),
//! and the AES-GCM seal bound, on a throw-away SoftHSM2 token.
//!
//! The attacker here is a second PKCS#11 session on the same token, logged in
//! with the user PIN: it may destroy and create any object the token lets it.
//! Needs SoftHSM2 2.5 or later (`CKA_DESTROYABLE`).
#![cfg(feature = "pkcs11")]
// The bound check measures SoftHSM2's real cost per advance in wall-clock time.
#![allow(clippy::disallowed_methods)]

mod sealed;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use vaultfleet::hsm::{
    softhsm2_module, softhsm2_throwaway_token, Counter, HardwareCounter, Hsm, HsmError, KeyKind,
    Pkcs11Config, Pkcs11Hsm, Pkcs11Limits,
};
use vaultfleet::{LogStore, SealedConfig, StorageError};
use zeroize::Zeroizing;

const TOKEN: &str = "vaultfleet-counter-test";
const PIN: &str = "1234";

/// One test at a time: the tests share one token, and several close and reopen
/// it (a restart); PKCS#11 login state belongs to the whole application, so a
/// reopen in one test could log out the sessions another test is using.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One throw-away token per test process.
fn hsm() -> Pkcs11Hsm {
    static HSM: OnceLock<(Pkcs11Hsm, tempfile::TempDir)> = OnceLock::new();
    HSM.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let hsm =
            softhsm2_throwaway_token(dir.path(), TOKEN, PIN).unwrap_or_else(|e| panic!("{e}"));
        (hsm, dir)
    })
    .0
    .clone()
}

fn limits(floor_every: u64) -> Pkcs11Limits {
    let mut l = Pkcs11Limits::default();
    l.counter_floor_every = floor_every.try_into().expect("non-zero");
    l
}

/// A second, independent session on the test token, logged in as its user: what
/// a host holding the PIN can do outside vaultfleet.
fn attacker() -> Session {
    let _ = hsm();
    let module = softhsm2_module().expect("SoftHSM2 module");
    let ctx = Pkcs11::new(module).expect("load the module");
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .expect("the test token");
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::new(PIN.into()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    session
}

fn counter_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(b"vaultfleet-counter".to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// How many objects the token holds for counter `label`.
fn counter_objects(session: &Session, label: &str) -> usize {
    session
        .find_objects(&counter_template(label))
        .unwrap()
        .len()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Writes `syncs` cycles of the sealed suite's history to a store at `dir`
/// (continuing from `from`), returning the counter the HSM then holds.
fn write(dir: &Path, hsm: &Pkcs11Hsm, group: u64, cycles: std::ops::Range<usize>) -> Counter {
    let mut s = sealed::open(dir, hsm, group, 1).unwrap();
    for ops in &sealed::history()[cycles] {
        sealed::apply_ops(&mut s, ops).unwrap();
        s.sync().unwrap();
    }
    drop(s);
    hsm.counter(&SealedConfig::new(group, 1).counter_label)
        .unwrap()
}

/// The attack of finding 6: keep an old disk image, let the replica write on,
/// then destroy every counter object the token lets you destroy, create one
/// naming the old image's head, and put the old image back. A floor written
/// after the old image outlives the attack, so the old image is a rollback.
#[test]
fn finding_6_deleted_and_recreated_counter_objects_are_a_rollback() {
    let _serial = serial();
    let hsm = hsm().with_limits(limits(4));
    let group = 610;
    let label = SealedConfig::new(group, 1).counter_label;
    let dir = tempfile::tempdir().unwrap();
    let (live, old) = (dir.path().join("live"), dir.path().join("old"));
    let at_3 = write(&live, &hsm, group, 0..3);
    assert_eq!(at_3.value, 3);
    copy_dir(&live, &old);
    let at_7 = write(&live, &hsm, group, 3..7);
    assert_eq!(at_7.value, 7, "a floor at 4, destroyable values after it");

    let attacker = attacker();
    let mut refused = 0;
    for object in attacker.find_objects(&counter_template(&label)).unwrap() {
        match attacker.destroy_object(object) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::ActionProhibited, _)) => refused += 1,
            Err(e) => panic!("destroying a counter object: {e}"),
        }
    }
    let mut value = at_3.value.to_be_bytes().to_vec();
    value.extend_from_slice(&at_3.binding);
    let mut forged = counter_template(&label);
    forged.extend([
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Value(value),
    ]);
    attacker.create_object(&forged).unwrap();

    match sealed::open(&old, &hsm, group, 1) {
        Err(StorageError::RolledBack {
            replica: 1,
            disk: 3,
            hsm: 4,
        }) => {}
        Err(e) => panic!("expected the rollback to stop at the floor, got {e}"),
        Ok(_) => panic!("a rolled-back image was opened after the counter was recreated"),
    }
    assert_eq!(refused, 1, "the floor at 4 could not be destroyed");
}

/// The window the floors leave, as docs/storage.md states it: a rollback to an
/// image at or after the latest floor, by fewer than `counter_floor_every`
/// syncs, is not caught. This pins the stated window; if it shrinks, update the
/// docs.
#[test]
fn finding_6_rollback_window_is_below_the_latest_floor() {
    let _serial = serial();
    let hsm = hsm().with_limits(limits(4));
    let group = 620;
    let label = SealedConfig::new(group, 1).counter_label;
    let dir = tempfile::tempdir().unwrap();
    let (live, old) = (dir.path().join("live"), dir.path().join("old"));
    let at_5 = write(&live, &hsm, group, 0..5);
    copy_dir(&live, &old);
    write(&live, &hsm, group, 5..7);
    let attacker = attacker();
    for object in attacker.find_objects(&counter_template(&label)).unwrap() {
        let _ = attacker.destroy_object(object);
    }
    let mut value = at_5.value.to_be_bytes().to_vec();
    value.extend_from_slice(&at_5.binding);
    let mut forged = counter_template(&label);
    forged.extend([
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Value(value),
    ]);
    attacker.create_object(&forged).unwrap();
    assert!(
        sealed::open(&old, &hsm, group, 1).is_ok(),
        "a rollback of 2 syncs past the floor at 4 is inside the documented window"
    );
}

/// Floors are non-destroyable and non-modifiable on the token itself.
#[test]
fn finding_6_floor_objects_are_neither_destroyable_nor_modifiable() {
    let _serial = serial();
    let hsm = hsm().with_limits(limits(2));
    let label = "floor-attributes";
    for i in 1..=5u8 {
        hsm.advance_counter(label, &[i; 32]).unwrap();
    }
    let attacker = attacker();
    let mut floors = Vec::new();
    for object in attacker.find_objects(&counter_template(label)).unwrap() {
        let attrs = attacker
            .get_attributes(
                object,
                &[
                    AttributeType::Value,
                    AttributeType::Destroyable,
                    AttributeType::Modifiable,
                ],
            )
            .unwrap();
        assert!(attrs.contains(&Attribute::Modifiable(false)));
        if attrs.contains(&Attribute::Destroyable(false)) {
            let Some(Attribute::Value(v)) = attrs.first() else {
                panic!("no value")
            };
            floors.push(u64::from_be_bytes(v[..8].try_into().unwrap()));
            assert!(matches!(
                attacker.update_attributes(object, &[Attribute::Value(vec![0; 40])]),
                Err(CkError::Pkcs11(
                    RvError::ActionProhibited | RvError::AttributeReadOnly,
                    _
                ))
            ));
        }
    }
    floors.sort_unstable();
    assert_eq!(floors, vec![2, 4], "a floor at every second value");
    assert_eq!(
        hsm.counter(label).unwrap(),
        Counter {
            value: 5,
            binding: [5; 32]
        }
    );
}

/// Advances `n` times with a floor every `floor_every`, checking the token's
/// object count stays within `n / floor_every + 2`; returns the time taken.
fn bounded_advances(label: &str, n: u64, floor_every: u64) -> std::time::Duration {
    let hsm = hsm().with_limits(limits(floor_every));
    let attacker = attacker();
    let start = Instant::now();
    for i in 1..=n {
        let mut binding = [0u8; 32];
        binding[..8].copy_from_slice(&i.to_be_bytes());
        assert_eq!(hsm.advance_counter(label, &binding).unwrap(), i);
        if i % (n / 10).max(1) == 0 {
            let objects = counter_objects(&attacker, label) as u64;
            assert!(
                objects <= i / floor_every + 2,
                "{objects} counter objects after {i} advances (a floor every {floor_every})"
            );
        }
    }
    let took = start.elapsed();
    assert_eq!(
        counter_objects(&attacker, label) as u64,
        n / floor_every + u64::from(n % floor_every != 0),
        "the floors and, past the last one, the newest value"
    );
    took
}

/// Object count stays bounded: 1,000 advances with a floor every 200 leave 5
/// objects (the floors; the newest value is one of them). SoftHSM2's file back
/// end writes and removes a file per advance, 3 to 8 ms each in a debug build
/// here, so CI runs this scaled-down check; the 100,000-advance run is the
/// ignored test below (docs/storage.md).
#[test]
fn finding_6_counter_objects_stay_bounded() {
    let _serial = serial();
    let took = bounded_advances("bounded-1k", 1_000, 200);
    eprintln!("1,000 SoftHSM2 counter advances took {took:?}");
}

/// The full 100,000 advances with the default floor interval (4096): at most 26
/// objects. Run with
/// `cargo test -p vaultfleet --all-features --test pkcs11_counter -- --ignored`.
#[test]
#[ignore = "100,000 SoftHSM2 advances take about 12 minutes; docs/storage.md gives the command"]
fn finding_6_counter_objects_stay_bounded_over_100k_advances() {
    let _serial = serial();
    let took = bounded_advances("bounded-100k", 100_000, Pkcs11Limits::DEFAULT_FLOOR_EVERY);
    eprintln!("100,000 SoftHSM2 counter advances took {took:?}");
}

fn reopen() -> Pkcs11Hsm {
    let _ = hsm();
    Pkcs11Hsm::open(&Pkcs11Config {
        module: softhsm2_module().expect("SoftHSM2 module"),
        token_label: TOKEN.to_string(),
        user_pin: Zeroizing::new(PIN.to_string()),
        limits: Pkcs11Limits::default(),
    })
    .unwrap()
}

fn seal_limits(seals_per_key: u64, reservation: u64) -> Pkcs11Limits {
    let mut l = Pkcs11Limits::default();
    l.seals_per_key = seals_per_key;
    l.seal_reservation = reservation.try_into().expect("non-zero");
    l
}

/// The Low finding: the AES-GCM key refuses to seal past its bound (10 here, 2^32
/// by default), and the count survives a restart (a new session reads the
/// durable reservation, counting its unused rest as spent).
#[test]
fn low_aes_gcm_seal_bound_is_enforced() {
    let _serial = serial();
    let hsm = hsm().with_limits(seal_limits(10, 3));
    let key = hsm.key("gcm-bound", KeyKind::Aead).unwrap();
    for i in 0..10 {
        let sealed = hsm
            .seal(key, b"ad", b"log batch")
            .unwrap_or_else(|e| panic!("seal {i}: {e}"));
        assert_eq!(&hsm.unseal(key, b"ad", &sealed).unwrap()[..], b"log batch");
    }
    match hsm.seal(key, b"ad", b"log batch") {
        Err(HsmError::SealLimitReached { label, limit: 10 }) => assert_eq!(label, "gcm-bound"),
        other => panic!("the 11th seal must be refused, got {other:?}"),
    }

    // Durable: 4 seals reserve 6 (two blocks of 3); a restart counts all 6 as
    // spent and allows the remaining 4.
    let key = hsm.key("gcm-bound-restart", KeyKind::Aead).unwrap();
    for _ in 0..4 {
        hsm.seal(key, b"ad", b"x").unwrap();
    }
    let again = reopen().with_limits(seal_limits(10, 3));
    let key = again.key("gcm-bound-restart", KeyKind::Aead).unwrap();
    for i in 0..4 {
        again
            .seal(key, b"ad", b"x")
            .unwrap_or_else(|e| panic!("seal {i} after the restart: {e}"));
    }
    assert!(matches!(
        again.seal(key, b"ad", b"x"),
        Err(HsmError::SealLimitReached { limit: 10, .. })
    ));
}

/// The test double of a hardware counter (docs/storage.md: no vendor counter is
/// tested): per label, a value that only `increment` moves, by one; `fail_next`
/// makes the next increment fail, as a crash between the token object and the
/// hardware step would.
#[derive(Default)]
struct FirmwareCounter {
    values: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    fail_next: std::sync::atomic::AtomicBool,
}

impl HardwareCounter for FirmwareCounter {
    fn read(&self, label: &str) -> Result<u64, HsmError> {
        Ok(*self.values.lock().unwrap().get(label).unwrap_or(&0))
    }
    fn increment(&self, label: &str) -> Result<u64, HsmError> {
        if self
            .fail_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(HsmError::Unavailable {
                operation: "the test double's increment",
                cause: None,
            });
        }
        let mut values = self.values.lock().unwrap();
        let v = values.entry(label.to_string()).or_insert(0);
        *v += 1;
        Ok(*v)
    }
}

fn forge(attacker: &Session, label: &str, counter: Counter) {
    let mut value = counter.value.to_be_bytes().to_vec();
    value.extend_from_slice(&counter.binding);
    let mut forged = counter_template(label);
    forged.extend([
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Value(value),
    ]);
    attacker.create_object(&forged).unwrap();
}

/// With a hardware counter there is no window: the rollback of 2 syncs that the
/// floors let through (previous test) is caught, whether the attacker destroys
/// the current binding (no binding for the hardware's value: refused), keeps it
/// (the old image is behind: `RolledBack`), or forges a second one for the
/// current value (ambiguous: refused).
#[test]
fn finding_6_hardware_counter_closes_the_window() {
    let _serial = serial();
    let firmware = std::sync::Arc::new(FirmwareCounter::default());
    let hsm = hsm()
        .with_limits(limits(4))
        .with_hardware_counter(firmware.clone());
    let group = 630;
    let label = SealedConfig::new(group, 1).counter_label;
    let dir = tempfile::tempdir().unwrap();
    let (live, old) = (dir.path().join("live"), dir.path().join("old"));
    let at_5 = write(&live, &hsm, group, 0..5);
    assert_eq!(at_5.value, 5);
    copy_dir(&live, &old);
    let at_7 = write(&live, &hsm, group, 5..7);
    assert_eq!(firmware.read(&label).unwrap(), 7);
    let attacker = attacker();

    // Keep the current binding, add the old one: the old image is behind.
    forge(&attacker, &label, at_5);
    match sealed::open(&old, &hsm, group, 1) {
        Err(StorageError::RolledBack {
            replica: 1,
            disk: 5,
            hsm: 7,
        }) => {}
        Err(e) => panic!("expected a rollback, got {e}"),
        Ok(_) => panic!("a rolled-back image was opened despite the hardware counter"),
    }
    // A second, different binding for the current value.
    forge(
        &attacker,
        &label,
        Counter {
            value: 7,
            binding: at_5.binding,
        },
    );
    assert!(matches!(
        hsm.counter(&label),
        Err(HsmError::Corrupt(
            vaultfleet::hsm::StateCorruption::CounterBindingAmbiguous { value: 7, .. }
        ))
    ));
    // Every object destroyed: no binding for the hardware's value.
    for object in attacker.find_objects(&counter_template(&label)).unwrap() {
        attacker.destroy_object(object).unwrap();
    }
    forge(&attacker, &label, at_5);
    match sealed::open(&old, &hsm, group, 1) {
        Err(StorageError::Hsm(HsmError::Corrupt(
            vaultfleet::hsm::StateCorruption::CounterBindingMissing { value: 7, .. },
        ))) => {}
        Err(e) => panic!("expected a missing binding, got {e}"),
        Ok(_) => panic!("a rolled-back image was opened despite the hardware counter"),
    }
    let _ = at_7;
}

/// With a hardware counter the token keeps one binding object per counter, and
/// a crash between the binding and the hardware step leaves the counter where
/// it was, with its binding.
#[test]
fn hardware_counter_keeps_one_object_and_survives_a_cut_advance() {
    let _serial = serial();
    let firmware = std::sync::Arc::new(FirmwareCounter::default());
    let hsm = hsm()
        .with_limits(limits(1))
        .with_hardware_counter(firmware.clone());
    let label = "hardware-bounded";
    let attacker = attacker();
    for i in 1..=200u64 {
        let mut binding = [0u8; 32];
        binding[..8].copy_from_slice(&i.to_be_bytes());
        assert_eq!(hsm.advance_counter(label, &binding).unwrap(), i);
        assert_eq!(counter_objects(&attacker, label), 1, "after advance {i}");
    }
    firmware
        .fail_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(hsm.advance_counter(label, &[0xee; 32]).is_err());
    let mut binding = [0u8; 32];
    binding[..8].copy_from_slice(&200u64.to_be_bytes());
    assert_eq!(
        hsm.counter(label).unwrap(),
        Counter {
            value: 200,
            binding
        },
        "the cut advance left the counter and its binding as they were"
    );
    assert_eq!(hsm.advance_counter(label, &[0xef; 32]).unwrap(), 201);
    assert_eq!(
        hsm.counter(label).unwrap(),
        Counter {
            value: 201,
            binding: [0xef; 32]
        }
    );
    assert_eq!(counter_objects(&attacker, label), 1);
}

/// Review finding: a session that never logged in can still create *public*
/// objects. One planted under a counter's label, with the largest value, must not
/// exhaust, move or fork the counter: only private token objects count.
#[test]
fn review_a_public_object_planted_without_the_pin_does_not_move_the_counter() {
    let _serial = serial();
    let hsm = hsm();
    let label = "planted-public";
    let before = hsm.advance_counter(label, &[7; 32]).unwrap();
    let mut value = u64::MAX.to_be_bytes().to_vec();
    value.extend_from_slice(&[9; 32]);
    let mut planted = counter_template(label);
    planted.extend([
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Value(value),
    ]);
    attacker().create_object(&planted).unwrap();
    let counter = hsm.counter(label).unwrap();
    assert_eq!(counter.value, before, "a public object moved the counter");
    assert_eq!(counter.binding, [7; 32]);
    assert_eq!(hsm.advance_counter(label, &[8; 32]).unwrap(), before + 1);
}

/// Review finding: a second key object under a key's label (planted, or left
/// by a failed ceremony) is refused by name, never silently one of the two.
#[test]
fn review_two_keys_under_one_label_are_refused() {
    let _serial = serial();
    let hsm = hsm();
    let label = "twice";
    hsm.key(label, KeyKind::Aead).unwrap();
    let mut second = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(cryptoki::object::KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    second.push(Attribute::Value(vec![0x42; 32]));
    attacker().create_object(&second).unwrap();
    let fresh = reopen();
    assert!(
        matches!(
            fresh.find_key(label, KeyKind::Aead),
            Err(HsmError::Corrupt(
                vaultfleet::hsm::StateCorruption::Ambiguous { count: 2, .. }
            ))
        ),
        "two keys under one label were not refused"
    );
}
