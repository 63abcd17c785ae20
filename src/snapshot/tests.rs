//! Tests of [`MemFiles`] and [`DirFiles`] against the [`SnapshotFiles`]
//! contract: round trips, determinism, tampering with the file on disk,
//! receiving, crash safety, garbage collection, and the sealer's plumbing.
//! Tests that apply to both run on each (`kits()`); those on real files use
//! [`DirFiles`] only.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use super::layout::{HEADER_FIXED_BYTES, TRAILER_BYTES};
use super::*;

const CHUNK: u32 = CHUNK_BYTES_MIN;
const C: usize = CHUNK as usize;
const REPLICA: ReplicaId = 1;

/// One implementation under test, with its directory if it has one.
struct Kit {
    name: &'static str,
    files: Box<dyn SnapshotFiles>,
    dir: Option<tempfile::TempDir>,
}

impl Kit {
    fn mem() -> Kit {
        Self::mem_sealed(None, REPLICA)
    }

    fn mem_sealed(sealer: Option<Arc<dyn ChunkSealer>>, replica: ReplicaId) -> Kit {
        Kit {
            name: "mem",
            files: Box::new(MemFiles::new(CHUNK, sealer, replica)),
            dir: None,
        }
    }

    fn dir() -> Kit {
        Self::dir_sealed(None, REPLICA)
    }

    fn dir_sealed(sealer: Option<Arc<dyn ChunkSealer>>, replica: ReplicaId) -> Kit {
        let dir = tempfile::tempdir().unwrap();
        let files = DirFiles::open(dir.path().join("snap"), CHUNK, sealer, replica).unwrap();
        Kit {
            name: "dir",
            files: Box::new(files),
            dir: Some(dir),
        }
    }

    /// The names in the snapshot directory (empty for memory).
    fn names(&self) -> Vec<String> {
        match &self.dir {
            None => Vec::new(),
            Some(d) => names(&d.path().join("snap")),
        }
    }

    fn snap_dir(&self) -> PathBuf {
        self.dir.as_ref().unwrap().path().join("snap")
    }
}

fn kits() -> [Kit; 2] {
    [Kit::mem(), Kit::dir()]
}

/// The names in `dir`, but for `.del` files (renamed for deletion, unlinked
/// on a thread of their own: gone as far as the files are concerned).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = all_names(dir)
        .into_iter()
        .filter(|n| !n.ends_with(".del"))
        .collect();
    v.sort();
    v
}

fn all_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Deletion off the caller's thread still deletes: the renamed files are
/// unlinked (a bounded wait, so a failure does not hang).
#[test]
// The deletion runs on a thread of its own: the test waits for it.
#[allow(clippy::disallowed_methods)]
fn retained_away_files_are_unlinked_off_the_callers_thread() {
    let dir = tempfile::tempdir().unwrap();
    let files = DirFiles::open(dir.path(), CHUNK, None, REPLICA).unwrap();
    for index in [5, 6, 7] {
        let mut w = files.create(7, REPLICA, index, 1).unwrap();
        w.write_all(&vec![index as u8; 3 * C]).unwrap();
        w.finish().unwrap();
    }
    files.retain_below(7).unwrap();
    assert_eq!(
        names(dir.path()).len(),
        1,
        "at once, as far as the files go"
    );
    for _ in 0..500 {
        if all_names(dir.path()).len() == 1 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("never unlinked: {:?}", all_names(dir.path()));
}

fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Writes `data` in random pieces (some empty) and finishes.
fn write(
    files: &dyn SnapshotFiles,
    data: &[u8],
    rng: &mut ChaCha8Rng,
    creator: ReplicaId,
    index: u64,
) -> SnapshotDescriptor {
    let mut w = files.create(7, creator, index, 3).unwrap();
    let mut rest = data;
    while !rest.is_empty() {
        let n = rng.gen_range(0..=(C + 17)).min(rest.len());
        assert_eq!(w.write(&rest[..n]).unwrap(), n);
        rest = &rest[n..];
    }
    w.finish().unwrap()
}

/// Every chunk, or the first error. Panics if the reader ever ends without
/// having checked every chunk (it must not).
fn chunks(
    files: &dyn SnapshotFiles,
    d: &SnapshotDescriptor,
) -> Result<Vec<(u32, Bytes)>, SnapshotFileError> {
    let mut r = files.open(d)?;
    assert_eq!(r.descriptor(), d);
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk()? {
        out.push(c);
    }
    // The end stays the end.
    assert!(r.next_chunk().unwrap().is_none());
    Ok(out)
}

fn read_all(
    files: &dyn SnapshotFiles,
    d: &SnapshotDescriptor,
) -> Result<Vec<u8>, SnapshotFileError> {
    Ok(chunks(files, d)?.into_iter().flat_map(|(_, c)| c).collect())
}

fn chunk_lens(d: &SnapshotDescriptor) -> Vec<usize> {
    (0..d.chunks).map(|s| d.chunk_len(s).unwrap()).collect()
}

#[test]
fn streams_round_trip_at_boundary_and_random_sizes() {
    for kit in kits() {
        let files = &*kit.files;
        let mut sizes = vec![0, 1, C - 1, C, C + 1, 3 * C + 5];
        for seed in 0..6u64 {
            sizes.push(ChaCha8Rng::seed_from_u64(1000 + seed).gen_range(0..4 * C));
        }
        for (i, &size) in sizes.iter().enumerate() {
            let seed = i as u64;
            let ctx = format!("{}: seed {seed}, size {size}", kit.name);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let data = random_bytes(&mut rng, size);
            let d = write(files, &data, &mut rng, 2, 100 + seed);
            assert_eq!(
                (d.group, d.creator, d.index, d.term),
                (7, 2, 100 + seed, 3),
                "{ctx}"
            );
            assert_eq!(d.total_bytes, size as u64, "{ctx}");
            assert_eq!(d.chunk_bytes, CHUNK, "{ctx}");
            assert_eq!(d.chunks as usize, size.div_ceil(C), "{ctx}");
            assert!(files.is_complete(&d), "{ctx}");

            let got = chunks(files, &d).unwrap();
            let seqs: Vec<u32> = got.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, (0..d.chunks).collect::<Vec<_>>(), "{ctx}");
            let lens: Vec<usize> = got.iter().map(|(_, c)| c.len()).collect();
            assert_eq!(lens, chunk_lens(&d), "{ctx}");
            let joined: Vec<u8> = got.into_iter().flat_map(|(_, c)| c).collect();
            assert!(joined == data, "{ctx}: chunks differ from the input");

            let mut through = Vec::new();
            ChunkRead::new(files.open(&d).unwrap())
                .read_to_end(&mut through)
                .unwrap();
            assert!(through == data, "{ctx}: ChunkRead differs from the input");

            // Small, odd reads.
            let mut small = Vec::new();
            let mut r = ChunkRead::new(files.open(&d).unwrap());
            let mut buf = [0u8; 7];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                small.extend_from_slice(&buf[..n]);
            }
            assert!(small == data, "{ctx}: 7-byte reads differ from the input");
        }
    }
}

#[test]
fn the_same_bytes_give_the_same_descriptor_and_file_on_both() {
    let data = random_bytes(&mut ChaCha8Rng::seed_from_u64(5), 2 * C + 9);
    let mem = MemFiles::new(CHUNK, None, REPLICA);
    let dir = tempfile::tempdir().unwrap();
    let disk = DirFiles::open(dir.path(), CHUNK, None, REPLICA).unwrap();
    // Different pieces on each side: the cutting must not depend on them.
    let a = write(&mem, &data, &mut ChaCha8Rng::seed_from_u64(1), 2, 9);
    let b = write(&disk, &data, &mut ChaCha8Rng::seed_from_u64(2), 2, 9);
    assert_eq!(a, b);
    let on_disk = std::fs::read(dir.path().join(dir::file_name(&b))).unwrap();
    assert!(mem.raw(&a.id).unwrap() == on_disk, "the layouts differ");

    // Another creator or other bytes give another id.
    let c = write(&mem, &data, &mut ChaCha8Rng::seed_from_u64(1), 3, 9);
    assert_ne!(c.id, a.id);
    let mut other = data.clone();
    other[C] ^= 1;
    let e = write(&mem, &other, &mut ChaCha8Rng::seed_from_u64(1), 2, 9);
    assert_ne!((e.id, e.digest), (a.id, a.digest));
}

/// A DirFiles holding one snapshot of 3 full chunks and 5 bytes.
struct OnDisk {
    _dir: tempfile::TempDir,
    files: DirFiles,
    d: SnapshotDescriptor,
    path: PathBuf,
    data: Vec<u8>,
}

fn on_disk() -> OnDisk {
    let dir = tempfile::tempdir().unwrap();
    let files = DirFiles::open(dir.path(), CHUNK, None, REPLICA).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let data = random_bytes(&mut rng, 3 * C + 5);
    let d = write(&files, &data, &mut rng, REPLICA, 50);
    let path = dir.path().join(dir::file_name(&d));
    assert!(path.exists());
    OnDisk {
        _dir: dir,
        files,
        d,
        path,
        data,
    }
}

/// Where chunk record `k` (its length prefix) starts in a plain file.
fn record_at(k: usize) -> usize {
    HEADER_FIXED_BYTES + k * (4 + C)
}

/// Reading fails (an error, never an end) and does not panic.
fn assert_read_fails(files: &DirFiles, d: &SnapshotDescriptor, what: &str) -> SnapshotFileError {
    match files.open(d) {
        Err(e) => e,
        Ok(mut r) => loop {
            match r.next_chunk() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("{what}: the reader reached its end"),
                Err(e) => {
                    // And stays failed.
                    assert!(r.next_chunk().is_err(), "{what}");
                    break e;
                }
            }
        },
    }
}

#[test]
fn a_flipped_byte_in_any_chunk_fails_at_the_end() {
    for k in 0..4 {
        let t = on_disk();
        let mut bytes = std::fs::read(&t.path).unwrap();
        bytes[record_at(k) + 4 + 3] ^= 0x20;
        std::fs::write(&t.path, &bytes).unwrap();
        let got = chunks(&t.files, &t.d);
        assert!(
            matches!(got, Err(SnapshotFileError::DigestMismatch { id }) if id == t.d.id),
            "chunk {k}: {got:?}"
        );
        // Through ChunkRead: an io::Error carrying the cause.
        let mut sink = Vec::new();
        let e = ChunkRead::new(t.files.open(&t.d).unwrap())
            .read_to_end(&mut sink)
            .unwrap_err();
        let cause = e
            .get_ref()
            .and_then(|e| e.downcast_ref::<SnapshotFileError>());
        assert!(
            matches!(cause, Some(SnapshotFileError::DigestMismatch { .. })),
            "chunk {k}: {e:?}"
        );
    }
}

#[test]
fn a_file_cut_at_a_chunk_boundary_fails() {
    let t = on_disk();
    let bytes = std::fs::read(&t.path).unwrap();
    let trailer = bytes[bytes.len() - TRAILER_BYTES..].to_vec();
    // The last chunk dropped, the trailer put back.
    let mut cut = bytes[..record_at(3)].to_vec();
    cut.extend_from_slice(&trailer);
    std::fs::write(&t.path, &cut).unwrap();
    assert_read_fails(&t.files, &t.d, "last chunk dropped");
    // Without its trailer it is not even complete.
    std::fs::write(&t.path, &bytes[..record_at(3)]).unwrap();
    assert!(!t.files.is_complete(&t.d));
    assert!(matches!(
        t.files.open(&t.d),
        Err(SnapshotFileError::Corrupt { .. })
    ));
}

#[test]
fn a_file_cut_mid_chunk_fails() {
    let t = on_disk();
    let bytes = std::fs::read(&t.path).unwrap();
    let trailer = bytes[bytes.len() - TRAILER_BYTES..].to_vec();
    for at in [
        HEADER_FIXED_BYTES + 2,
        record_at(0) + 4 + 1,
        record_at(1) + 100,
        record_at(3) + 4 + 2,
        bytes.len() - TRAILER_BYTES - 1,
    ] {
        std::fs::write(&t.path, &bytes[..at]).unwrap();
        assert!(!t.files.is_complete(&t.d), "cut at {at}");
        assert_read_fails(&t.files, &t.d, "cut, no trailer");
        let mut cut = bytes[..at].to_vec();
        cut.extend_from_slice(&trailer);
        std::fs::write(&t.path, &cut).unwrap();
        let e = assert_read_fails(&t.files, &t.d, "cut, trailer put back");
        assert!(
            matches!(
                e,
                SnapshotFileError::Corrupt { .. } | SnapshotFileError::DigestMismatch { .. }
            ),
            "cut at {at}: {e:?}"
        );
    }
}

#[test]
fn swapped_chunks_fail() {
    let t = on_disk();
    let mut bytes = std::fs::read(&t.path).unwrap();
    let first = bytes[record_at(0)..record_at(1)].to_vec();
    let second = bytes[record_at(1)..record_at(2)].to_vec();
    assert!(first != second);
    bytes[record_at(0)..record_at(1)].copy_from_slice(&second);
    bytes[record_at(1)..record_at(2)].copy_from_slice(&first);
    std::fs::write(&t.path, &bytes).unwrap();
    let e = assert_read_fails(&t.files, &t.d, "swapped");
    assert!(
        matches!(e, SnapshotFileError::DigestMismatch { .. }),
        "{e:?}"
    );
}

#[test]
fn a_huge_record_length_is_refused_before_it_is_read() {
    let t = on_disk();
    let mut bytes = std::fs::read(&t.path).unwrap();
    bytes[record_at(1)..record_at(1) + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(&t.path, &bytes).unwrap();
    let e = assert_read_fails(&t.files, &t.d, "huge record");
    assert!(matches!(e, SnapshotFileError::Corrupt { .. }), "{e:?}");
}

#[test]
fn a_file_under_another_descriptors_name_is_refused() {
    let t = on_disk();
    let other = write(
        &t.files,
        &t.data[..C + 1],
        &mut ChaCha8Rng::seed_from_u64(3),
        REPLICA,
        60,
    );
    let other_path = t.path.with_file_name(dir::file_name(&other));
    std::fs::rename(&t.path, &other_path).unwrap();
    assert!(!t.files.is_complete(&other));
    assert!(matches!(
        t.files.open(&other),
        Err(SnapshotFileError::Corrupt { .. })
    ));
    assert!(matches!(
        t.files.open(&t.d),
        Err(SnapshotFileError::NotFound { id }) if id == t.d.id
    ));
}

#[test]
fn a_file_from_another_replicas_dir_is_refused() {
    let t = on_disk();
    // Replica 2 receives the same snapshot: same descriptor, same name.
    let dir2 = tempfile::tempdir().unwrap();
    let files2 = DirFiles::open(dir2.path(), CHUNK, None, 2).unwrap();
    let mut rx = files2.receive(&t.d).unwrap();
    for (seq, c) in chunks(&t.files, &t.d).unwrap() {
        rx.put(seq, &c).unwrap();
    }
    rx.finish().unwrap();
    assert!(read_all(&files2, &t.d).unwrap() == t.data);
    std::fs::copy(dir2.path().join(dir::file_name(&t.d)), &t.path).unwrap();
    let e = assert_read_fails(&t.files, &t.d, "another replica's file");
    assert!(matches!(e, SnapshotFileError::Corrupt { .. }), "{e:?}");
}

#[test]
fn receive_refuses_bad_descriptors_before_reserving_anything() {
    let good = on_disk().d;
    for kit in kits() {
        for (what, edit) in [
            (
                "huge",
                (|d: &mut SnapshotDescriptor| {
                    d.chunk_bytes = CHUNK_BYTES_MAX;
                    d.total_bytes = SNAPSHOT_BYTES_MAX + 1;
                    d.chunks = chunk_count(d.total_bytes, d.chunk_bytes) as u32;
                }) as fn(&mut _),
            ),
            ("count", |d| d.chunks += 1),
            ("size", |d| d.total_bytes += u64::from(CHUNK)),
            ("tiny chunks", |d| d.chunk_bytes = 1),
            ("no chunks", |d| d.chunks = 0),
        ] {
            let mut bad = good.clone();
            edit(&mut bad);
            let got = kit.files.receive(&bad);
            assert!(
                matches!(got, Err(SnapshotFileError::BadDescriptor { .. })),
                "{} {what}",
                kit.name
            );
            assert!(
                kit.names().is_empty(),
                "{} {what}: {:?}",
                kit.name,
                kit.names()
            );
            assert!(!kit.files.is_complete(&bad));
            assert!(kit.files.open(&bad).is_err());
        }
    }
}

/// A snapshot to receive: its descriptor and chunks, written by replica 9.
fn source(len: usize, seed: u64) -> (SnapshotDescriptor, Vec<Bytes>, Vec<u8>) {
    let src = MemFiles::new(CHUNK, None, 9);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = random_bytes(&mut rng, len);
    let d = write(&src, &data, &mut rng, 9, 77);
    let cs = chunks(&src, &d)
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    (d, cs, data)
}

fn bad_chunk(r: Result<(), SnapshotFileError>) -> bool {
    matches!(r, Err(SnapshotFileError::BadChunk { .. }))
}

#[test]
fn receive_refuses_chunks_out_of_order_of_the_wrong_size_or_past_the_last() {
    let (d, cs, data) = source(2 * C + 3, 11);
    for kit in kits() {
        let n = kit.name;
        let mut rx = kit.files.receive(&d).unwrap();
        assert!(bad_chunk(rx.put(1, &cs[1])), "{n}: seq 1 first");
        assert!(bad_chunk(rx.put(0, &cs[0][1..])), "{n}: short");
        let mut long = cs[0].to_vec();
        long.push(0);
        assert!(bad_chunk(rx.put(0, &long)), "{n}: long");
        rx.put(0, &cs[0]).unwrap();
        assert!(bad_chunk(rx.put(0, &cs[0])), "{n}: seq 0 again");
        assert!(bad_chunk(rx.put(2, &cs[2])), "{n}: a gap");
        rx.put(1, &cs[1]).unwrap();
        assert!(
            bad_chunk(rx.put(2, &cs[1])),
            "{n}: a full chunk in last place"
        );
        rx.put(2, &cs[2]).unwrap();
        assert!(bad_chunk(rx.put(3, b"x")), "{n}: past the last");
        rx.finish().unwrap();
        assert!(kit.files.is_complete(&d), "{n}");
        assert!(read_all(&*kit.files, &d).unwrap() == data, "{n}");
        if kit.dir.is_some() {
            assert_eq!(kit.names(), vec![dir::file_name(&d)]);
        }
    }
}

/// Review of the TCP streams, M2: a transfer the disk cannot hold is refused
/// before anything is written, not after the disk filled.
#[test]
fn a_receive_the_disk_cannot_hold_is_refused_before_a_byte_is_written() {
    let (d, cs, data) = source(2 * C + 3, 13);
    let tmp = tempfile::tempdir().unwrap();
    let free = fs2::available_space(tmp.path()).unwrap();
    // Leave more free than the disk has: nothing fits.
    let files = DirFiles::open(tmp.path(), CHUNK, None, 1)
        .unwrap()
        .keep_free(free.saturating_add(1 << 30));
    match files.receive(&d) {
        Err(SnapshotFileError::NoSpace { needed, available }) => {
            assert!(
                needed > available && needed >= d.total_bytes,
                "{needed} {available}"
            );
        }
        other => panic!("expected NoSpace, got {:?}", other.map(|_| ())),
    }
    assert!(
        all_names(tmp.path()).is_empty(),
        "{:?}",
        all_names(tmp.path())
    );
    // Review of the credits change, M-1: a receive in progress holds its
    // space. With room for one file and a half, the second is refused while
    // the first is open, and accepted once it ended.
    let file = d.total_bytes + u64::from(d.chunks) * 64;
    let mut files = files.keep_free(0);
    files.free_for_test = Some(file + file / 2);
    let first = files.receive(&d).unwrap();
    match files.receive(&d) {
        Err(e @ SnapshotFileError::NoSpace { .. }) => assert!(e.is_no_space()),
        other => panic!(
            "the second receive should be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    drop(first);
    drop(files.receive(&d).unwrap());
    files.free_for_test = None;
    // With room to spare, the same descriptor is received whole.
    let mut rx = files.receive(&d).unwrap();
    for (seq, c) in cs.iter().enumerate() {
        rx.put(seq as u32, c).unwrap();
    }
    rx.finish().unwrap();
    assert!(read_all(&files, &d).unwrap() == data);
}

#[test]
fn finishing_before_the_last_chunk_is_incomplete_and_leaves_nothing() {
    let (d, cs, _) = source(2 * C + 3, 12);
    for kit in kits() {
        let mut rx = kit.files.receive(&d).unwrap();
        rx.put(0, &cs[0]).unwrap();
        rx.put(1, &cs[1]).unwrap();
        let got = rx.finish();
        assert!(
            matches!(
                got,
                Err(SnapshotFileError::Incomplete {
                    got: 2,
                    want: 3,
                    ..
                })
            ),
            "{}: {got:?}",
            kit.name
        );
        assert!(!kit.files.is_complete(&d));
        assert!(kit.names().is_empty(), "{:?}", kit.names());
    }
}

#[test]
fn a_wrong_chunk_fails_at_finish_and_leaves_nothing() {
    let (d, cs, _) = source(2 * C + 3, 13);
    for k in 0..3 {
        for kit in kits() {
            let mut rx = kit.files.receive(&d).unwrap();
            for (seq, c) in cs.iter().enumerate() {
                let mut c = c.to_vec();
                if seq == k {
                    c[0] ^= 1;
                }
                rx.put(seq as u32, &c).unwrap();
            }
            let got = rx.finish();
            assert!(
                matches!(got, Err(SnapshotFileError::DigestMismatch { id }) if id == d.id),
                "{} chunk {k}: {got:?}",
                kit.name
            );
            assert!(!kit.files.is_complete(&d));
            assert!(kit.names().is_empty(), "{:?}", kit.names());
        }
    }
}

#[test]
fn an_empty_snapshot_is_received_with_no_chunk() {
    let (d, cs, _) = source(0, 14);
    assert!(cs.is_empty());
    for kit in kits() {
        let mut rx = kit.files.receive(&d).unwrap();
        assert!(bad_chunk(rx.put(0, b"")));
        rx.finish().unwrap();
        assert!(kit.files.is_complete(&d));
        assert!(read_all(&*kit.files, &d).unwrap().is_empty());
    }
}

#[test]
fn a_receive_of_a_held_snapshot_checks_its_chunks_and_keeps_the_held_file() {
    let (d, cs, data) = source(C + 3, 15);
    for kit in kits() {
        let mut rx = kit.files.receive(&d).unwrap();
        rx.put(0, &cs[0]).unwrap();
        rx.put(1, &cs[1]).unwrap();
        rx.finish().unwrap();
        let held = kit.names();

        let mut again = kit.files.receive(&d).unwrap();
        assert_eq!(kit.names(), held, "{}: nothing new on disk", kit.name);
        assert!(bad_chunk(again.put(1, &cs[1])));
        again.put(0, &cs[0]).unwrap();
        let mut wrong = cs[1].to_vec();
        wrong[0] ^= 1;
        again.put(1, &wrong).unwrap();
        assert!(matches!(
            again.finish(),
            Err(SnapshotFileError::DigestMismatch { .. })
        ));
        assert!(
            kit.files.is_complete(&d),
            "{}: the held file stays",
            kit.name
        );

        let mut good = kit.files.receive(&d).unwrap();
        good.put(0, &cs[0]).unwrap();
        good.put(1, &cs[1]).unwrap();
        good.finish().unwrap();
        assert_eq!(kit.names(), held);
        assert!(read_all(&*kit.files, &d).unwrap() == data);
    }
}

#[test]
fn two_receives_of_one_id_at_once_both_finish_and_one_file_remains() {
    let (d, cs, data) = source(C + 3, 16);
    for kit in kits() {
        let mut a = kit.files.receive(&d).unwrap();
        let mut b = kit.files.receive(&d).unwrap();
        a.put(0, &cs[0]).unwrap();
        b.put(0, &cs[0]).unwrap();
        b.put(1, &cs[1]).unwrap();
        a.put(1, &cs[1]).unwrap();
        a.finish().unwrap();
        let reader = kit.files.open(&d).unwrap();
        b.finish().unwrap();
        assert!(kit.files.is_complete(&d));
        if kit.dir.is_some() {
            assert_eq!(kit.names(), vec![dir::file_name(&d)]);
        }
        assert!(read_all(&*kit.files, &d).unwrap() == data, "{}", kit.name);
        // A reader opened on the first file still reads it.
        let mut through = Vec::new();
        ChunkRead::new(reader).read_to_end(&mut through).unwrap();
        assert!(through == data, "{}", kit.name);
    }
}

#[test]
fn a_dropped_writer_or_receiver_leaves_nothing() {
    let (d, cs, _) = source(2 * C + 3, 17);
    for kit in kits() {
        let mut w = kit.files.create(7, REPLICA, 5, 1).unwrap();
        w.write_all(&vec![1u8; 2 * C + 1]).unwrap();
        if kit.dir.is_some() {
            assert_eq!(kit.names().len(), 1, "the writer's .tmp");
        }
        drop(w);
        assert!(kit.names().is_empty(), "{:?}", kit.names());

        let mut rx = kit.files.receive(&d).unwrap();
        rx.put(0, &cs[0]).unwrap();
        drop(rx);
        assert!(kit.names().is_empty(), "{:?}", kit.names());
        assert!(!kit.files.is_complete(&d));

        // And the same stream written in full becomes visible.
        let mut w = kit.files.create(7, REPLICA, 5, 1).unwrap();
        w.write_all(&vec![1u8; 2 * C + 1]).unwrap();
        let done = w.finish().unwrap();
        assert!(kit.files.is_complete(&done));
    }
}

#[test]
fn a_memory_writer_dropped_unfinished_adds_nothing() {
    let files = MemFiles::new(CHUNK, None, REPLICA);
    let mut w = files.create(7, REPLICA, 5, 1).unwrap();
    w.write_all(&vec![1u8; 2 * C + 1]).unwrap();
    drop(w);
    assert_eq!(files.len(), 0);
}

#[test]
fn a_stray_tmp_is_deleted_at_open_and_other_files_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("123-00000000.tmp"), b"partial").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let files = DirFiles::open(dir.path(), CHUNK, None, REPLICA).unwrap();
    assert_eq!(names(dir.path()), vec!["notes.txt".to_string()]);
    files.retain(&[]).unwrap();
    assert_eq!(names(dir.path()), vec!["notes.txt".to_string()]);
}

#[test]
fn a_files_chunk_size_outside_the_descriptor_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(DirFiles::open(dir.path(), CHUNK_BYTES_MAX + 1, None, REPLICA).is_err());
    let mem = MemFiles::new(CHUNK_BYTES_MIN - 1, None, REPLICA);
    assert!(matches!(
        mem.create(1, 1, 1, 1),
        Err(SnapshotFileError::BadDescriptor { .. })
    ));
}

#[test]
fn retain_keeps_the_kept_and_spares_open_readers_and_live_writers() {
    for kit in kits() {
        let files = &*kit.files;
        let n = kit.name;
        let mut rng = ChaCha8Rng::seed_from_u64(18);
        let data_a = random_bytes(&mut rng, C + 1);
        let data_b = random_bytes(&mut rng, 3 * C + 5);
        let a = write(files, &data_a, &mut rng, REPLICA, 1);
        let b = write(files, &data_b, &mut rng, REPLICA, 2);
        let c = write(files, b"c", &mut rng, REPLICA, 3);
        if kit.dir.is_some() {
            // An abandoned partial (as a crash of an earlier process leaves).
            std::fs::write(kit.snap_dir().join("1-00000001.tmp"), b"x").unwrap();
        }
        let mut reader = files.open(&b).unwrap();
        let first = reader.next_chunk().unwrap().unwrap();
        let mut live = files.create(7, REPLICA, 4, 1).unwrap();
        live.write_all(&data_a).unwrap();

        files.retain(&[a.id]).unwrap();
        assert!(files.is_complete(&a), "{n}");
        assert!(!files.is_complete(&b), "{n}");
        assert!(!files.is_complete(&c), "{n}");
        assert!(matches!(
            files.open(&b),
            Err(SnapshotFileError::NotFound { .. })
        ));
        if kit.dir.is_some() {
            let names = kit.names();
            assert_eq!(names.len(), 2, "{n}: {names:?}");
            assert!(names.contains(&dir::file_name(&a)), "{names:?}");
            assert!(
                names
                    .iter()
                    .any(|x| x.ends_with(".tmp") && !x.starts_with("1-")),
                "the live writer's .tmp: {names:?}"
            );
        }

        // The reader opened before still reads to its checked end.
        let mut got = first.1.to_vec();
        while let Some((_, chunk)) = reader.next_chunk().unwrap() {
            got.extend_from_slice(&chunk);
        }
        assert!(got == data_b, "{n}");
        // The live writer still finishes.
        let d = live.finish().unwrap();
        assert!(read_all(files, &d).unwrap() == data_a, "{n}");
        assert!(read_all(files, &a).unwrap() == data_a, "{n}");
    }
}

/// A sealer that records what reaches it: `seal` puts `seq` and `last` in
/// front of the plaintext and `open` checks them. Plumbing only; it hides and
/// authenticates nothing.
/// A `resume` call: header, group, replica, index, term.
type Resume = (Vec<u8>, u64, ReplicaId, u64, u64);

#[derive(Default)]
struct Recorder {
    begins: Mutex<Vec<(u64, ReplicaId, u64, u64)>>,
    resumes: Mutex<Vec<Resume>>,
    seals: Arc<Mutex<Vec<(u32, bool)>>>,
    opens: Arc<Mutex<Vec<(u32, bool)>>>,
}

struct RecordingSeal {
    header: Vec<u8>,
    seals: Arc<Mutex<Vec<(u32, bool)>>>,
    opens: Arc<Mutex<Vec<(u32, bool)>>>,
}

impl ChunkSealer for Recorder {
    fn begin(
        &self,
        group: u64,
        replica: ReplicaId,
        index: u64,
        term: u64,
    ) -> Result<Box<dyn FileSeal>, SnapshotFileError> {
        let mut begins = self.begins.lock();
        begins.push((group, replica, index, term));
        Ok(Box::new(RecordingSeal {
            header: format!("hdr{}", begins.len()).into_bytes(),
            seals: self.seals.clone(),
            opens: self.opens.clone(),
        }))
    }

    fn resume(
        &self,
        header: &[u8],
        group: u64,
        replica: ReplicaId,
        index: u64,
        term: u64,
    ) -> Result<Box<dyn FileSeal>, SnapshotFileError> {
        self.resumes
            .lock()
            .push((header.to_vec(), group, replica, index, term));
        Ok(Box::new(RecordingSeal {
            header: header.to_vec(),
            seals: self.seals.clone(),
            opens: self.opens.clone(),
        }))
    }
}

impl FileSeal for RecordingSeal {
    fn header(&self) -> &[u8] {
        &self.header
    }

    fn seal(
        &mut self,
        seq: u32,
        last: bool,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SnapshotFileError> {
        self.seals.lock().push((seq, last));
        let mut out = seq.to_be_bytes().to_vec();
        out.push(u8::from(last));
        out.extend_from_slice(plaintext);
        Ok(out)
    }

    fn open(&self, seq: u32, last: bool, sealed: &[u8]) -> Result<Vec<u8>, SnapshotFileError> {
        self.opens.lock().push((seq, last));
        let mut tag = seq.to_be_bytes().to_vec();
        tag.push(u8::from(last));
        match sealed.strip_prefix(&tag[..]) {
            Some(plaintext) => Ok(plaintext.to_vec()),
            None => Err(SnapshotFileError::Tampered { seq }),
        }
    }
}

#[test]
fn the_sealer_sees_each_chunks_seq_and_last_flag_and_the_storing_replica() {
    let expect = vec![(0, false), (1, false), (2, true)];
    for sealed_kit in [Kit::mem_sealed, Kit::dir_sealed] {
        let rec = Arc::new(Recorder::default());
        let kit = sealed_kit(Some(rec.clone()), 5);
        let n = kit.name;
        let files = &*kit.files;
        let mut rng = ChaCha8Rng::seed_from_u64(19);
        let data = random_bytes(&mut rng, 2 * C + 3);
        let d = write(files, &data, &mut rng, 4, 30);
        assert_eq!(*rec.begins.lock(), vec![(7, 5, 30, 3)], "{n}: begin");
        assert_eq!(*rec.seals.lock(), expect, "{n}: writer seals");

        assert!(read_all(files, &d).unwrap() == data, "{n}");
        assert_eq!(
            *rec.resumes.lock(),
            vec![(b"hdr1".to_vec(), 7, 5, 30, 3)],
            "{n}: resume gets the stored header"
        );
        assert_eq!(*rec.opens.lock(), expect, "{n}: reader opens");

        // A received snapshot is sealed for the replica that stores it.
        let (src, cs, src_data) = source(2 * C + 3, 20);
        rec.seals.lock().clear();
        let mut rx = files.receive(&src).unwrap();
        for (seq, c) in cs.iter().enumerate() {
            rx.put(seq as u32, c).unwrap();
        }
        rx.finish().unwrap();
        assert_eq!(rec.begins.lock()[1], (7, 5, 77, 3), "{n}: receive begin");
        assert_eq!(*rec.seals.lock(), expect, "{n}: receiver seals");
        assert!(read_all(files, &src).unwrap() == src_data, "{n}");
    }
}

#[test]
fn a_seal_failure_is_reported_at_its_chunk() {
    let rec = Arc::new(Recorder::default());
    let dir = tempfile::tempdir().unwrap();
    let files = DirFiles::open(dir.path(), CHUNK, Some(rec), REPLICA).unwrap();
    let data = random_bytes(&mut ChaCha8Rng::seed_from_u64(21), 2 * C + 3);
    let d = write(
        &files,
        &data,
        &mut ChaCha8Rng::seed_from_u64(22),
        REPLICA,
        1,
    );
    let path = dir.path().join(dir::file_name(&d));
    let mut bytes = std::fs::read(&path).unwrap();
    // The header is "hdr1"; chunk 1's record starts after chunk 0's (5 bytes
    // of tag each); flip the last flag of chunk 1.
    let header = HEADER_FIXED_BYTES + 4;
    let tag_at = header + (4 + 5 + C) + 4 + 4;
    assert_eq!(bytes[tag_at], 0);
    bytes[tag_at] = 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = assert_read_fails(&files, &d, "a chunk that does not open");
    assert!(matches!(e, SnapshotFileError::Tampered { seq: 1 }), "{e:?}");
}

#[test]
fn a_plain_store_refuses_a_sealed_file_and_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = DirFiles::open(
        dir.path(),
        CHUNK,
        Some(Arc::new(Recorder::default())),
        REPLICA,
    )
    .unwrap();
    let d = write(
        &sealed,
        b"abc",
        &mut ChaCha8Rng::seed_from_u64(23),
        REPLICA,
        1,
    );
    let plain = DirFiles::open(dir.path(), CHUNK, None, REPLICA).unwrap();
    assert!(matches!(
        plain.open(&d),
        Err(SnapshotFileError::Corrupt { .. })
    ));
    let p = write(
        &plain,
        b"abc",
        &mut ChaCha8Rng::seed_from_u64(23),
        REPLICA,
        2,
    );
    assert!(matches!(
        sealed.open(&p),
        Err(SnapshotFileError::Corrupt { .. })
    ));
}

#[test]
fn retain_below_keeps_the_files_at_or_above_an_index() {
    let mem_files = MemFiles::new(CHUNK, None, REPLICA);
    let dir = tempfile::tempdir().unwrap();
    let dir_files = DirFiles::open(dir.path(), CHUNK, None, REPLICA).unwrap();
    type RetainBelow<'a> = &'a dyn Fn(u64) -> Result<(), SnapshotFileError>;
    let cases: [(&str, &dyn SnapshotFiles, RetainBelow); 2] = [
        ("mem", &mem_files, &|i| mem_files.retain_below(i)),
        ("dir", &dir_files, &|i| dir_files.retain_below(i)),
    ];
    for (n, files, retain_below) in cases {
        let mut rng = ChaCha8Rng::seed_from_u64(24);
        let ds: Vec<SnapshotDescriptor> = [5u64, 9, 10, 12]
            .iter()
            .map(|&i| write(files, &random_bytes(&mut rng, C + 1), &mut rng, REPLICA, i))
            .collect();
        let mut reader = files.open(&ds[0]).unwrap();
        retain_below(10).unwrap();
        let complete: Vec<u64> = ds
            .iter()
            .filter(|d| files.is_complete(d))
            .map(|d| d.index)
            .collect();
        assert_eq!(complete, vec![10, 12], "{n}");
        while reader.next_chunk().unwrap().is_some() {}
        files.retain(&[]).unwrap();
    }
    assert!(names(dir.path()).is_empty());
}
