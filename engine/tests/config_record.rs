//! Integration tests of `config.bin` through the public API only: the file layout a reader of
//! the SPEC's fixed header sees, the two-slot protocol under torn writes (simulated by writing
//! partial slots into a real file, then reopening), corruption handling, and the registry hash.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use engine::config_record::{
    decode_slot, encode_slot, pack, registry_hash, unpack, ConfigFile, ConfigRecord, RecordError,
    TerminalMode, FILE_BYTES, FLAGS_KNOWN, FLAG_DEBUG, FLAG_NAMES, FLAG_OPEN_REGISTRATION,
    FLAG_PREMIUM_TYPES, FLAG_PRIVATE_REGISTRY, FLAG_READ_ONLY, SLOT_BYTES,
};

const NPM: &str = "https://registry.npmjs.org";

fn temp_config() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.bin");
    (dir, path)
}

fn open(path: &Path) -> Result<(ConfigFile, ConfigRecord), RecordError> {
    ConfigFile::open_or_create(path, &ConfigRecord::new(NPM, 0))
}

/// `MurmurHash3_x86_32` written from the reference algorithm, independent of the murmur3 crate.
fn murmur3_x86_32_reference(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    let mut k = 0u32;
    for (i, &b) in tail.iter().enumerate() {
        k |= u32::from(b) << (8 * i);
    }
    if !tail.is_empty() {
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[test]
fn murmur3_reference_matches_known_vectors() {
    assert_eq!(murmur3_x86_32_reference(b"", 0), 0);
    assert_eq!(murmur3_x86_32_reference(b"", 1), 0x514e_28b7);
    assert_eq!(murmur3_x86_32_reference(b"hello", 0), 0x248b_fa47);
    assert_eq!(
        murmur3_x86_32_reference(b"The quick brown fox jumps over the lazy dog", 0),
        0x2e4f_f723
    );
}

#[test]
fn registry_hash_is_murmur3_x86_32_of_the_canonical_url() {
    let expected = murmur3_x86_32_reference(NPM.as_bytes(), 0);
    assert_eq!(registry_hash(NPM), expected);
    assert_eq!(registry_hash("https://registry.npmjs.org/"), expected);
    assert_eq!(registry_hash("HTTPS://REGISTRY.NPMJS.ORG"), expected);
    assert_eq!(registry_hash(""), 0);
    assert_ne!(registry_hash("http://localhost:4873"), expected);
}

#[test]
fn create_then_reopen_returns_the_same_record() {
    let (_dir, path) = temp_config();
    let initial = ConfigRecord::new(NPM, FLAG_PRIVATE_REGISTRY);
    let (file, created) = ConfigFile::open_or_create(&path, &initial).expect("create");
    assert_eq!(
        created,
        ConfigRecord {
            generation: 1,
            ..initial
        }
    );
    assert_eq!(file.read().expect("read"), created);
    assert_eq!(fs::metadata(&path).expect("stat").len(), FILE_BYTES as u64);
    drop(file);

    // An existing file wins over the `initial` argument.
    let other = ConfigRecord::new("http://elsewhere", FLAG_DEBUG);
    let (_, reopened) = ConfigFile::open_or_create(&path, &other).expect("reopen");
    assert_eq!(reopened, created);
    let leftovers: Vec<_> = fs::read_dir(path.parent().expect("has parent"))
        .expect("list dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert_eq!(leftovers, ["config.bin"], "no temp file left behind");
}

#[test]
fn file_offsets_match_the_spec_layout_after_a_write() {
    let (_dir, path) = temp_config();
    let (mut file, _) = open(&path).expect("create");
    let flags = FLAG_DEBUG | FLAG_READ_ONLY;
    let written = file
        .write(&ConfigRecord {
            terminal_mode: TerminalMode::Cooked,
            terminal_rows: 40,
            terminal_cols: 120,
            ..ConfigRecord::new(NPM, flags)
        })
        .expect("write");
    let bytes = fs::read(&path).expect("read file");
    assert_eq!(bytes.len(), FILE_BYTES);
    assert_eq!(&bytes[0..4], b"AREG");
    assert_eq!(bytes[4], 1);
    assert_eq!(&bytes[5..9], &registry_hash(NPM).to_le_bytes());
    assert_eq!(&bytes[9..13], &flags.to_le_bytes());
    assert_eq!(bytes[13], 1);
    assert_eq!(bytes[14], 40);
    assert_eq!(bytes[15], 120);
    assert_eq!(&bytes[16..24], &written.generation.to_le_bytes());
    assert_eq!(
        &bytes[..SLOT_BYTES],
        &bytes[SLOT_BYTES..],
        "both slots hold the record"
    );
}

#[test]
fn generation_increases_by_one_per_write() {
    let (_dir, path) = temp_config();
    let (mut file, first) = open(&path).expect("create");
    assert_eq!(first.generation, 1);
    let mut r = first;
    for expected in 2..=20u64 {
        r.flags ^= FLAG_DEBUG;
        // The caller's generation is ignored: the file assigns newest + 1.
        r.generation = 999;
        let written = file.write(&r).expect("write");
        assert_eq!(written.generation, expected);
        assert_eq!(written.flags, r.flags);
        assert_eq!(file.read().expect("read"), written);
    }
    // Another handle (the CLI while the server runs) continues the same sequence.
    let (mut other, seen) = open(&path).expect("second handle");
    assert_eq!(seen.generation, 20);
    assert_eq!(other.write(&seen).expect("write").generation, 21);
    assert_eq!(file.write(&seen).expect("write").generation, 22);
}

/// State of a file after a completed write of `old`, and the slot bytes of the next record.
struct TearSetup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    before: Vec<u8>,
    old: ConfigRecord,
    new: ConfigRecord,
}

fn tear_setup() -> TearSetup {
    let (dir, path) = temp_config();
    let (mut file, _) = open(&path).expect("create");
    let old = file
        .write(&ConfigRecord::new(NPM, FLAG_OPEN_REGISTRATION))
        .expect("write old");
    let new = ConfigRecord {
        terminal_mode: TerminalMode::Raw,
        generation: old.generation + 1,
        ..ConfigRecord::new(NPM, FLAG_PREMIUM_TYPES | FLAG_READ_ONLY)
    };
    let before = fs::read(&path).expect("read file");
    TearSetup {
        _dir: dir,
        path,
        before,
        old,
        new,
    }
}

/// Puts the file back to `before`, then lays down the first `slot1_bytes` bytes of the new
/// slot over slot 1 and the first `slot0_bytes` over slot 0, as a crash at that point of the
/// two-slot protocol would leave it.
fn simulate_crash(s: &TearSetup, slot1_bytes: usize, slot0_bytes: usize) {
    fs::write(&s.path, &s.before).expect("restore file");
    let new_slot = encode_slot(&s.new);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&s.path)
        .expect("open for tearing");
    f.write_all_at(&new_slot[..slot1_bytes], SLOT_BYTES as u64)
        .expect("partial slot 1");
    f.write_all_at(&new_slot[..slot0_bytes], 0)
        .expect("partial slot 0");
}

/// Goal: a crash anywhere in the write of slot 1 leaves the old record (or, once the slot's
/// meaningful bytes are all down, the new one), never garbage. Method: every prefix length.
#[test]
fn torn_slot1_write_yields_old_or_new() {
    let s = tear_setup();
    for k in 0..=SLOT_BYTES {
        simulate_crash(&s, k, 0);
        let (file, got) = open(&s.path).unwrap_or_else(|e| panic!("tear at {k}: {e}"));
        assert!(got == s.old || got == s.new, "tear at {k}: {got:?}");
        if k == 0 {
            assert_eq!(got, s.old);
        }
        if k == SLOT_BYTES {
            assert_eq!(got, s.new, "slot 1 complete");
        }
        assert_eq!(file.read().expect("read"), got);
    }
}

/// Goal: once slot 1 is complete, a crash anywhere in the write of slot 0 yields the new
/// record, and reopening restores the fixed header at offset 0. Method: every prefix length.
#[test]
fn torn_slot0_write_yields_new_and_is_repaired() {
    let s = tear_setup();
    for k in 0..=SLOT_BYTES {
        simulate_crash(&s, SLOT_BYTES, k);
        let (_, got) = open(&s.path).unwrap_or_else(|e| panic!("tear at {k}: {e}"));
        assert_eq!(got, s.new, "tear at {k}");
        let bytes = fs::read(&s.path).expect("read file");
        assert_eq!(
            &bytes[..SLOT_BYTES],
            &encode_slot(&s.new),
            "tear at {k}: slot 0"
        );
        assert_eq!(&bytes[0..4], b"AREG");
        assert_eq!(&bytes[9..13], &s.new.flags.to_le_bytes());
    }
}

#[test]
fn torn_writes_then_a_completed_write_continue_the_generation() {
    let s = tear_setup();
    simulate_crash(&s, SLOT_BYTES / 2, 0);
    let (mut file, got) = open(&s.path).expect("open");
    assert_eq!(got, s.old);
    let written = file.write(&s.new).expect("write");
    assert_eq!(written.generation, s.old.generation + 1);
    let bytes = fs::read(&s.path).expect("read file");
    assert_eq!(decode_slot(&bytes[..SLOT_BYTES]).expect("slot 0"), written);
    assert_eq!(decode_slot(&bytes[SLOT_BYTES..]).expect("slot 1"), written);
}

#[test]
fn one_corrupt_slot_falls_back_to_the_other() {
    let s = tear_setup();
    fs::write(&s.path, &s.before).expect("restore");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&s.path)
        .expect("open");
    f.write_all_at(&[0xff], 20).expect("corrupt slot 0");
    let (_, got) = open(&s.path).expect("slot 1 still valid");
    assert_eq!(got, s.old);
    assert_eq!(
        fs::read(&s.path).expect("read")[..SLOT_BYTES],
        encode_slot(&s.old),
        "slot 0 repaired from slot 1"
    );
}

#[test]
fn both_slots_corrupt_is_an_error_and_the_file_is_left_alone() {
    let (_dir, path) = temp_config();
    drop(open(&path).expect("create"));
    let mut bytes = fs::read(&path).expect("read");
    bytes[16] ^= 0x01;
    bytes[SLOT_BYTES + 16] ^= 0x01;
    fs::write(&path, &bytes).expect("corrupt both");
    let err = open(&path).expect_err("both corrupt");
    let msg = err.to_string();
    assert!(matches!(err, RecordError::Corrupt { .. }), "{msg}");
    assert!(msg.contains("config.bin: corrupt config record"), "{msg}");
    assert!(msg.contains("slot 0: checksum mismatch"), "{msg}");
    assert!(msg.contains("slot 1: checksum mismatch"), "{msg}");
    assert_eq!(fs::read(&path).expect("read"), bytes, "never rewritten");

    fs::write(&path, b"AREG\x01junk").expect("short garbage");
    let msg = open(&path).expect_err("short file").to_string();
    assert!(msg.contains("file is 9 bytes"), "{msg}");

    let mut bad_magic = bytes.clone();
    bad_magic[0..4].copy_from_slice(b"NOPE");
    bad_magic[SLOT_BYTES..SLOT_BYTES + 4].copy_from_slice(b"NOPE");
    fs::write(&path, &bad_magic).expect("bad magic");
    let msg = open(&path).expect_err("bad magic").to_string();
    assert!(msg.contains("bad magic \"NOPE\""), "{msg}");
}

#[test]
fn write_refuses_an_invalid_record_without_touching_the_file() {
    let (_dir, path) = temp_config();
    let (mut file, first) = open(&path).expect("create");
    let before = fs::read(&path).expect("read");
    let zero_rows = ConfigRecord {
        terminal_rows: 0,
        ..first
    };
    let err = file.write(&zero_rows).expect_err("rows 0");
    assert!(matches!(err, RecordError::InvalidRecord { .. }), "{err}");
    assert!(err.to_string().contains("terminal rows is 0"), "{err}");
    let high_flag = ConfigRecord {
        flags: 1 << 31,
        ..first
    };
    assert!(file.write(&high_flag).is_err());
    assert_eq!(fs::read(&path).expect("read"), before);
    // A refused record is not an I/O failure: the file is still writable.
    assert_eq!(file.write(&first).expect("write").generation, 2);
}

#[test]
fn unknown_but_storable_flags_survive_a_round_trip() {
    let (_dir, path) = temp_config();
    let (mut file, first) = open(&path).expect("create");
    let future = ConfigRecord {
        flags: FLAG_DEBUG | (1 << 12),
        ..first
    };
    let written = file.write(&future).expect("write");
    assert_eq!(open(&path).expect("reopen").1.flags, FLAG_DEBUG | (1 << 12));
    assert_eq!(unpack(pack(&written), written.generation), written);
}

#[test]
fn flag_names_cover_every_known_flag() {
    let names: Vec<&str> = FLAG_NAMES.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(
        names,
        [
            "premium_types",
            "private_registry",
            "debug",
            "open_registration",
            "read_only"
        ]
    );
    let union = FLAG_NAMES.iter().fold(0, |acc, (_, bit, _)| acc | bit);
    assert_eq!(union, FLAGS_KNOWN);
    assert!(FLAG_NAMES.iter().all(|(_, _, about)| !about.is_empty()));
}

#[test]
fn missing_directory_is_an_io_error_with_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent").join("config.bin");
    let err = open(&path).expect_err("no such dir");
    assert!(matches!(err, RecordError::Io { .. }), "{err}");
    assert!(err.to_string().contains("absent"), "{err}");
}
