//! Fuzz target: `engine::config_record::decode_slot` on arbitrary bytes, plus (so the fuzzer
//! gets past the checksum) a record built from the input's fields, encoded and decoded again.
//! Never panics; a decoded slot re-encodes to the same bytes, and `pack`/`unpack` round-trip.
#![no_main]

use engine::config_record::{decode_slot, encode_slot, pack, unpack, ConfigRecord};
use engine::config_record::{TerminalMode, SLOT_BYTES};
use libfuzzer_sys::fuzz_target;

fn check_decoded(bytes: &[u8], record: &ConfigRecord) {
    assert_eq!(
        &encode_slot(record)[..],
        bytes,
        "decode/encode changed the slot"
    );
    assert_eq!(unpack(pack(record), record.generation), *record);
}

fn check(data: &[u8]) {
    if let Ok(record) = decode_slot(data) {
        check_decoded(data, &record);
    }
    if data.len() < 20 {
        return;
    }
    let u32_at = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&data[12..20]);
    let built = ConfigRecord {
        config_version: data[0],
        registry_hash: u32_at(4),
        flags: u32_at(8),
        terminal_mode: TerminalMode::from_u8(data[1] % 3).expect("modes 0, 1 and 2 exist"),
        terminal_rows: data[2],
        terminal_cols: data[3],
        generation: u64::from_le_bytes(generation),
    };
    let slot: [u8; SLOT_BYTES] = encode_slot(&built);
    if let Ok(record) = decode_slot(&slot) {
        assert_eq!(record, built, "encode/decode changed the record");
        check_decoded(&slot, &record);
    }
}

fuzz_target!(|data: &[u8]| check(data));
