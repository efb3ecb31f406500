//! The config record, `<home>/config.bin` (SPEC section 4): the registry's live switchboard.
//!
//! One slot, 32 bytes, little-endian:
//!   0..4   magic `AREG`                4      config version u8 (0 legacy, 1 modern)
//!   5..9   registry hash u32           9..13  feature flags u32
//!   13     terminal mode u8            14     terminal rows u8     15  terminal cols u8
//!   16..24 generation u64              24..28 checksum u32: CRC-32C of bytes 0..24
//!   28..32 padding, zero
//! The file is two slots: slot 0 at offset 0, slot 1 (the journal copy) at offset 32. Readers
//! decode both and take the valid slot with the higher generation (slot 0 on a tie); a slot is
//! valid only once magic, checksum, version, terminal mode, rows, cols, padding and flag range
//! all verify. Neither valid is a `Corrupt` error, never a silent default.
//!
//! Why CRC-32C: it detects every error burst up to 32 bits, so any single corrupted byte in a
//! slot is caught by construction, not by luck; a 64-bit hash truncated to 32 bits gives no
//! such guarantee. Why padding must be zero: the checksum does not cover it, and a later
//! format that uses it will bump the config version.
//!
//! Flags: bits 0..13 (`FLAGS_STORABLE`) may be set; `FLAGS_KNOWN` are the ones this build
//! acts on. Storable-but-unknown bits are kept untouched, so a newer build may add up to eight
//! flags without older readers refusing the file. Bits 13..32 must be zero, because `pack`
//! squeezes a whole record but its generation into one `u64` (see `pack`).
//!
//! Written only by `ConfigFile::write` (and the create and repair paths of `open_or_create`),
//! under an exclusive `flock` so the CLI and a running server never interleave their writes.
//! Readers take no lock: the checksums make a concurrent write look like an older record.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The first four bytes of every slot.
pub const MAGIC: [u8; 4] = *b"AREG";
/// The config version this build writes for new records.
pub const CONFIG_VERSION_CURRENT: u8 = 1;
/// Oldest config version this build reads ("legacy" in SPEC section 4; same field layout).
pub const CONFIG_VERSION_LEGACY: u8 = 0;

const MAGIC_OFFSET: usize = 0;
const CONFIG_VERSION_OFFSET: usize = MAGIC_OFFSET + MAGIC.len();
const REGISTRY_HASH_OFFSET: usize = CONFIG_VERSION_OFFSET + size_of::<u8>();
const FLAGS_OFFSET: usize = REGISTRY_HASH_OFFSET + size_of::<u32>();
const TERMINAL_MODE_OFFSET: usize = FLAGS_OFFSET + size_of::<u32>();
const TERMINAL_ROWS_OFFSET: usize = TERMINAL_MODE_OFFSET + size_of::<u8>();
const TERMINAL_COLS_OFFSET: usize = TERMINAL_ROWS_OFFSET + size_of::<u8>();
const GENERATION_OFFSET: usize = TERMINAL_COLS_OFFSET + size_of::<u8>();
const CHECKSUM_OFFSET: usize = GENERATION_OFFSET + size_of::<u64>();
const PADDING_OFFSET: usize = CHECKSUM_OFFSET + size_of::<u32>();

/// Bytes in one slot.
pub const SLOT_BYTES: usize = 32;
/// Bytes in `config.bin`: slot 0, then slot 1.
pub const FILE_BYTES: usize = 2 * SLOT_BYTES;
const SLOT0_OFFSET: u64 = 0;
const SLOT1_OFFSET: u64 = SLOT_BYTES as u64;

// The SPEC fixes offsets 0..16; everything after is ours, but must fit in one slot.
const _: () = assert!(CONFIG_VERSION_OFFSET == 4);
const _: () = assert!(REGISTRY_HASH_OFFSET == 5);
const _: () = assert!(FLAGS_OFFSET == 9);
const _: () = assert!(TERMINAL_MODE_OFFSET == 13);
const _: () = assert!(TERMINAL_ROWS_OFFSET == 14);
const _: () = assert!(TERMINAL_COLS_OFFSET == 15);
const _: () = assert!(GENERATION_OFFSET == 16);
const _: () = assert!(PADDING_OFFSET <= SLOT_BYTES);
const _: () = assert!(SLOT1_OFFSET as usize + SLOT_BYTES == FILE_BYTES);

/// Tokens are signed `EdDSA` when set, `RS256` when clear (reserved: signing is not built yet).
pub const FLAG_PREMIUM_TYPES: u32 = 1 << 0;
/// Reads need a token (private token issuer).
pub const FLAG_PRIVATE_REGISTRY: u32 = 1 << 1;
/// Debug logging.
pub const FLAG_DEBUG: u32 = 1 << 2;
/// `npm login` of an unknown user creates that user.
pub const FLAG_OPEN_REGISTRATION: u32 = 1 << 3;
/// Maintenance: every write answers 503.
pub const FLAG_READ_ONLY: u32 = 1 << 4;
/// Every flag this build acts on.
pub const FLAGS_KNOWN: u32 = FLAG_PREMIUM_TYPES
    | FLAG_PRIVATE_REGISTRY
    | FLAG_DEBUG
    | FLAG_OPEN_REGISTRATION
    | FLAG_READ_ONLY;
/// How many low flag bits a record may use (see `pack` for why not 32).
pub const FLAGS_STORABLE_BITS: u32 = 13;
/// Every flag bit a valid record may have set, known to this build or not.
pub const FLAGS_STORABLE: u32 = (1 << FLAGS_STORABLE_BITS) - 1;

/// (name, bit, one-line description) for `config get` / `config env` / `--help`.
pub const FLAG_NAMES: &[(&str, u32, &str)] = &[
    (
        "premium_types",
        FLAG_PREMIUM_TYPES,
        "sign tokens with EdDSA instead of RS256 (reserved: token signing is not built yet)",
    ),
    (
        "private_registry",
        FLAG_PRIVATE_REGISTRY,
        "reads need a token (private token issuer)",
    ),
    ("debug", FLAG_DEBUG, "debug logging"),
    (
        "open_registration",
        FLAG_OPEN_REGISTRATION,
        "npm login of an unknown user creates that user",
    ),
    (
        "read_only",
        FLAG_READ_ONLY,
        "maintenance mode: every write answers 503",
    ),
];

// FLAG_NAMES lists every known flag exactly once, and every known flag is storable.
const _: () = {
    let mut union = 0u32;
    let mut i = 0;
    while i < FLAG_NAMES.len() {
        let bit = FLAG_NAMES[i].1;
        assert!(bit.is_power_of_two() && union & bit == 0);
        union |= bit;
        i += 1;
    }
    assert!(union == FLAGS_KNOWN);
    assert!(FLAGS_KNOWN & !FLAGS_STORABLE == 0);
};

/// How the terminal UI draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TerminalMode {
    Disabled = 0,
    Cooked = 1,
    Raw = 2,
}

impl TerminalMode {
    pub fn from_u8(v: u8) -> Option<TerminalMode> {
        match v {
            0 => Some(TerminalMode::Disabled),
            1 => Some(TerminalMode::Cooked),
            2 => Some(TerminalMode::Raw),
            _ => None,
        }
    }

    /// The lowercase name `config get|set` and `config env` use.
    pub fn name(self) -> &'static str {
        match self {
            TerminalMode::Disabled => "disabled",
            TerminalMode::Cooked => "cooked",
            TerminalMode::Raw => "raw",
        }
    }

    pub fn from_name(name: &str) -> Option<TerminalMode> {
        [
            TerminalMode::Disabled,
            TerminalMode::Cooked,
            TerminalMode::Raw,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

/// One decoded slot. `generation` is assigned by `ConfigFile::write`; callers leave it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigRecord {
    pub config_version: u8,
    pub registry_hash: u32,
    pub flags: u32,
    pub terminal_mode: TerminalMode,
    pub terminal_rows: u8,
    pub terminal_cols: u8,
    pub generation: u64,
}

impl ConfigRecord {
    /// `config_version` 1, rows 24, cols 80, mode `Disabled`, generation 0, hash of
    /// `registry_url`.
    pub fn new(registry_url: &str, flags: u32) -> ConfigRecord {
        ConfigRecord {
            config_version: CONFIG_VERSION_CURRENT,
            registry_hash: registry_hash(registry_url),
            flags,
            terminal_mode: TerminalMode::Disabled,
            terminal_rows: 24,
            terminal_cols: 80,
            generation: 0,
        }
    }

    /// True when every bit of `flag` is set.
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag == flag
    }
}

/// Why one slot does not hold a valid record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("slot is {len} bytes, expected {SLOT_BYTES}")]
    Length { len: usize },
    #[error("bad magic \"{}\", expected \"AREG\"", .found.escape_ascii())]
    Magic { found: [u8; 4] },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error(
        "config version {version} is not supported (this build reads {CONFIG_VERSION_LEGACY} \
         and {CONFIG_VERSION_CURRENT}; written by a newer agentregistry?)"
    )]
    ConfigVersion { version: u8 },
    #[error("terminal mode {value} is not 0 (disabled), 1 (cooked) or 2 (raw)")]
    TerminalMode { value: u8 },
    #[error("terminal rows is 0, must be at least 1")]
    ZeroRows,
    #[error("terminal cols is 0, must be at least 1")]
    ZeroCols,
    #[error("padding bytes 28..32 are not zero")]
    Padding,
    #[error(
        "flag bits {bits:#010x} are set, but only bits 0..{FLAGS_STORABLE_BITS} may be \
         (written by a newer agentregistry?)"
    )]
    ReservedFlags { bits: u32 },
}

/// Errors of the config record and its file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{}: {op} failed: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("{}: corrupt config record: {detail}", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("invalid config record slot: {0}")]
    InvalidSlot(#[from] SlotError),
    #[error("{}: refusing to write an invalid config record: {reason}", .path.display())]
    InvalidRecord { path: PathBuf, reason: SlotError },
    #[error(
        "{}: an earlier write of the config record failed; config writes are stopped until \
         restart",
        .path.display()
    )]
    Poisoned { path: PathBuf },
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table, built at compile time.
const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

fn crc32c(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = CRC32C_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn u32_at(b: &[u8; SLOT_BYTES], offset: usize) -> u32 {
    let mut le = [0u8; 4];
    le.copy_from_slice(&b[offset..offset + 4]);
    u32::from_le_bytes(le)
}

fn u64_at(b: &[u8; SLOT_BYTES], offset: usize) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&b[offset..offset + 8]);
    u64::from_le_bytes(le)
}

/// The slot bytes of `r`, checksum included. Does not validate `r`: `decode_slot` of the
/// result refuses what a reader would refuse, which is how `ConfigFile` checks before writing.
pub fn encode_slot(r: &ConfigRecord) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[MAGIC_OFFSET..CONFIG_VERSION_OFFSET].copy_from_slice(&MAGIC);
    b[CONFIG_VERSION_OFFSET] = r.config_version;
    b[REGISTRY_HASH_OFFSET..FLAGS_OFFSET].copy_from_slice(&r.registry_hash.to_le_bytes());
    b[FLAGS_OFFSET..TERMINAL_MODE_OFFSET].copy_from_slice(&r.flags.to_le_bytes());
    b[TERMINAL_MODE_OFFSET] = r.terminal_mode as u8;
    b[TERMINAL_ROWS_OFFSET] = r.terminal_rows;
    b[TERMINAL_COLS_OFFSET] = r.terminal_cols;
    b[GENERATION_OFFSET..CHECKSUM_OFFSET].copy_from_slice(&r.generation.to_le_bytes());
    let checksum = crc32c(&b[..CHECKSUM_OFFSET]);
    b[CHECKSUM_OFFSET..PADDING_OFFSET].copy_from_slice(&checksum.to_le_bytes());
    b
}

/// Decodes one slot; checks magic, checksum, version (0 or 1), terminal mode range,
/// rows/cols >= 1, zero padding and that only storable flag bits are set.
pub fn decode_slot(b: &[u8]) -> Result<ConfigRecord, RecordError> {
    Ok(decode_slot_checked(b)?)
}

fn decode_slot_checked(b: &[u8]) -> Result<ConfigRecord, SlotError> {
    let b: &[u8; SLOT_BYTES] = b
        .try_into()
        .map_err(|_| SlotError::Length { len: b.len() })?;
    let mut found = [0u8; 4];
    found.copy_from_slice(&b[MAGIC_OFFSET..CONFIG_VERSION_OFFSET]);
    if found != MAGIC {
        return Err(SlotError::Magic { found });
    }
    // Before any field check, so a damaged field reports as damage, not as a strange value.
    let stored = u32_at(b, CHECKSUM_OFFSET);
    let computed = crc32c(&b[..CHECKSUM_OFFSET]);
    if stored != computed {
        return Err(SlotError::Checksum { stored, computed });
    }
    let config_version = b[CONFIG_VERSION_OFFSET];
    if config_version != CONFIG_VERSION_LEGACY && config_version != CONFIG_VERSION_CURRENT {
        return Err(SlotError::ConfigVersion {
            version: config_version,
        });
    }
    let mode = b[TERMINAL_MODE_OFFSET];
    let terminal_mode =
        TerminalMode::from_u8(mode).ok_or(SlotError::TerminalMode { value: mode })?;
    let terminal_rows = b[TERMINAL_ROWS_OFFSET];
    if terminal_rows == 0 {
        return Err(SlotError::ZeroRows);
    }
    let terminal_cols = b[TERMINAL_COLS_OFFSET];
    if terminal_cols == 0 {
        return Err(SlotError::ZeroCols);
    }
    if b[PADDING_OFFSET..].iter().any(|&x| x != 0) {
        return Err(SlotError::Padding);
    }
    let flags = u32_at(b, FLAGS_OFFSET);
    if flags & !FLAGS_STORABLE != 0 {
        return Err(SlotError::ReservedFlags {
            bits: flags & !FLAGS_STORABLE,
        });
    }
    Ok(ConfigRecord {
        config_version,
        registry_hash: u32_at(b, REGISTRY_HASH_OFFSET),
        flags,
        terminal_mode,
        terminal_rows,
        terminal_cols,
        generation: u64_at(b, GENERATION_OFFSET),
    })
}

/// `MurmurHash3` `x86_32`, seed 0, of `canonical_registry_url(url)`, via the murmur3 crate.
pub fn registry_hash(url: &str) -> u32 {
    let canonical = canonical_registry_url(url);
    murmur3::murmur3_32(&mut canonical.as_bytes(), 0)
        .expect("reading from an in-memory byte slice cannot fail")
}

/// The form of a registry URL that is hashed: surrounding whitespace trimmed, scheme and host
/// lowercased (user info, path and query keep their case), trailing slashes removed. A URL
/// without `://` is read as `host[:port][/path]`.
pub fn canonical_registry_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(&scheme.to_ascii_lowercase());
        out.push_str("://");
    }
    // Trailing slashes go (with whitespace they uncover), but never the "//" of the scheme.
    let keep = out.len();
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            out.push_str(user_info);
            out.push('@');
            out.push_str(&host.to_ascii_lowercase());
        }
        None => out.push_str(&authority.to_ascii_lowercase()),
    }
    out.push_str(tail);
    while out.len() > keep && out.ends_with(|c: char| c == '/' || c.is_whitespace()) {
        out.pop();
    }
    out
}

// `pack` layout, low bit first. 32 + 13 + 2 + 1 + 8 + 8 = 64: the flag width is what is left
// once every other field has the fewest bits that hold all its valid values.
const PACK_HASH_SHIFT: u32 = 0;
const PACK_FLAGS_SHIFT: u32 = PACK_HASH_SHIFT + u32::BITS;
const PACK_MODE_SHIFT: u32 = PACK_FLAGS_SHIFT + FLAGS_STORABLE_BITS;
const PACK_MODE_BITS: u32 = 2;
const PACK_VERSION_SHIFT: u32 = PACK_MODE_SHIFT + PACK_MODE_BITS;
const PACK_ROWS_SHIFT: u32 = PACK_VERSION_SHIFT + 1;
const PACK_COLS_SHIFT: u32 = PACK_ROWS_SHIFT + u8::BITS;
const _: () = assert!(PACK_COLS_SHIFT + u8::BITS == u64::BITS);
const _: () = assert!(TerminalMode::Raw as u32 >> PACK_MODE_BITS == 0);
// One version bit in `pack`: decode accepts only the two versions below.
const _: () = assert!(CONFIG_VERSION_LEGACY == 0 && CONFIG_VERSION_CURRENT == 1);

/// Packs all fields but `generation` into one `u64`, so a server can publish a snapshot
/// through one `AtomicU64` that every core reads lock-free; `unpack` is its inverse.
///
/// # Panics
/// When `r` is not a record `decode_slot` would accept in its version and flag fields
/// (config version above 1, or flags outside `FLAGS_STORABLE`). Records from `ConfigFile`
/// always pass; a hand-built record must be checked first (`decode_slot(&encode_slot(r))`).
pub fn pack(r: &ConfigRecord) -> u64 {
    assert!(
        r.config_version <= 1 && r.flags & !FLAGS_STORABLE == 0,
        "pack() of a record no reader would accept: version {}, flags {:#x}",
        r.config_version,
        r.flags
    );
    (u64::from(r.registry_hash) << PACK_HASH_SHIFT)
        | (u64::from(r.flags) << PACK_FLAGS_SHIFT)
        | (u64::from(r.terminal_mode as u8) << PACK_MODE_SHIFT)
        | (u64::from(r.config_version) << PACK_VERSION_SHIFT)
        | (u64::from(r.terminal_rows) << PACK_ROWS_SHIFT)
        | (u64::from(r.terminal_cols) << PACK_COLS_SHIFT)
}

/// The inverse of `pack`, with `generation` put back.
///
/// # Panics
/// When `v` did not come from `pack` (its terminal mode bits are 3).
pub fn unpack(v: u64, generation: u64) -> ConfigRecord {
    let field = |shift: u32, bits: u32| (v >> shift) & ((1u64 << bits) - 1);
    let mode = field(PACK_MODE_SHIFT, PACK_MODE_BITS) as u8;
    ConfigRecord {
        config_version: field(PACK_VERSION_SHIFT, 1) as u8,
        registry_hash: field(PACK_HASH_SHIFT, u32::BITS) as u32,
        flags: field(PACK_FLAGS_SHIFT, FLAGS_STORABLE_BITS) as u32,
        terminal_mode: TerminalMode::from_u8(mode)
            .expect("pack() stores only the terminal modes 0, 1 and 2"),
        terminal_rows: field(PACK_ROWS_SHIFT, u8::BITS) as u8,
        terminal_cols: field(PACK_COLS_SHIFT, u8::BITS) as u8,
        generation,
    }
}

/// The raw I/O of a record write, apart from the protocol so a test can tear a write.
trait SlotWriter {
    fn write_at(&mut self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()>;
    fn sync_data(&mut self, file: &File) -> io::Result<()>;
}

/// The real thing: `pwrite` and `fdatasync`.
struct DirectWrites;

impl SlotWriter for DirectWrites {
    fn write_at(&mut self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(bytes, offset)
    }

    fn sync_data(&mut self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// Writes one encoded record into both slots. On error, returns what failed.
///
/// Torn-write protocol: slot 1 (the journal copy) first, made durable, then slot 0.
/// - Torn or lost write of slot 1: slot 1 fails its checksum, slot 0 still holds the previous
///   record, so readers see the previous record.
/// - Crash after slot 1 is durable: slot 1 holds the complete new record with the higher
///   generation; whether slot 0 is old, torn or new, readers see the new record.
///
/// Slot 0 goes last so that once this returns, offsets 0..16 of the file (the SPEC's fixed
/// header, which outside tools read directly) hold the newest committed record.
fn write_record<W: SlotWriter>(
    w: &mut W,
    file: &File,
    slot: &[u8; SLOT_BYTES],
) -> Result<(), (&'static str, io::Error)> {
    w.write_at(file, slot, SLOT1_OFFSET)
        .map_err(|e| ("pwrite of slot 1", e))?;
    w.sync_data(file)
        .map_err(|e| ("fdatasync after slot 1", e))?;
    w.write_at(file, slot, SLOT0_OFFSET)
        .map_err(|e| ("pwrite of slot 0", e))?;
    w.sync_data(file)
        .map_err(|e| ("fdatasync after slot 0", e))?;
    Ok(())
}

/// Holds the exclusive `flock` on `config.bin` for one write; released on drop.
struct WriteLock<'a>(&'a File);

impl<'a> WriteLock<'a> {
    fn acquire(file: &'a File, path: &Path) -> Result<WriteLock<'a>, RecordError> {
        file.lock().map_err(|source| RecordError::Io {
            path: path.to_path_buf(),
            op: "flock",
            source,
        })?;
        Ok(WriteLock(file))
    }
}

impl Drop for WriteLock<'_> {
    fn drop(&mut self) {
        // Unlocking an open descriptor we locked cannot fail in a way we could act on; the
        // lock also goes away when the descriptor is closed.
        let _ = self.0.unlock();
    }
}

/// Both slots of the file as read.
struct Slots {
    newest: ConfigRecord,
    /// Slot 0 holds `newest` (so the fixed header at offset 0 is current).
    slot0_is_newest: bool,
}

/// Distinguishes the temp files of concurrent creators within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An open `config.bin`.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    file: File,
    /// Set by a failed write: the file's state is unknown until a restart reopens it.
    poisoned: bool,
}

impl ConfigFile {
    /// Opens `<path>`, creating it with `initial` (generation 1) when absent (create via temp
    /// file + fsync + link + fsync dir). Returns the file and the newest valid record.
    ///
    /// When slot 0 does not hold the newest record (a crash tore the last write after slot 1
    /// was durable), slot 0 is rewritten from slot 1 so the fixed header is current again.
    /// Blocks: fsync.
    pub fn open_or_create(
        path: &Path,
        initial: &ConfigRecord,
    ) -> Result<(ConfigFile, ConfigRecord), RecordError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create(path, initial)?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|source| io_error(path, "open", source))?
            }
            Err(source) => return Err(io_error(path, "open", source)),
        };
        let config = ConfigFile {
            path: path.to_path_buf(),
            file,
            poisoned: false,
        };
        let slots = config.read_slots()?;
        if slots.slot0_is_newest {
            return Ok((config, slots.newest));
        }
        let newest = config.repair_slot0()?;
        Ok((config, newest))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads both slots (pread) and returns the newest valid record.
    pub fn read(&self) -> Result<ConfigRecord, RecordError> {
        Ok(self.read_slots()?.newest)
    }

    /// Writes `r` with generation = current newest + 1 (the two-slot protocol of
    /// `write_record`); returns the record as written. Refuses, before any I/O, a record a
    /// reader would refuse. After a failed write every later write returns `Poisoned`.
    /// Blocks: flock, fsync.
    pub fn write(&mut self, r: &ConfigRecord) -> Result<ConfigRecord, RecordError> {
        self.write_with(r, &mut DirectWrites)
    }

    fn write_with<W: SlotWriter>(
        &mut self,
        r: &ConfigRecord,
        writer: &mut W,
    ) -> Result<ConfigRecord, RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned {
                path: self.path.clone(),
            });
        }
        let _lock = WriteLock::acquire(&self.file, &self.path)?;
        // Under the lock, so a write by another process since our last read is counted.
        let current = self.read()?;
        let generation = current
            .generation
            .checked_add(1)
            .ok_or_else(|| RecordError::Corrupt {
                path: self.path.clone(),
                detail: "generation counter is at its maximum".to_string(),
            })?;
        let next = ConfigRecord { generation, ..*r };
        let slot = encode_checked(&self.path, &next)?;
        if let Err((op, source)) = write_record(writer, &self.file, &slot) {
            self.poisoned = true;
            return Err(io_error(&self.path, op, source));
        }
        Ok(next)
    }

    fn read_slots(&self) -> Result<Slots, RecordError> {
        let mut buf = [0u8; FILE_BYTES];
        let len = read_up_to(&self.file, &mut buf).map_err(|e| io_error(&self.path, "pread", e))?;
        let slot0 = decode_slot_checked(&buf[..len.min(SLOT_BYTES)]);
        let slot1 = decode_slot_checked(&buf[SLOT_BYTES..len.max(SLOT_BYTES)]);
        match (slot0, slot1) {
            (Ok(s0), Ok(s1)) if s1.generation > s0.generation => Ok(Slots {
                newest: s1,
                slot0_is_newest: false,
            }),
            (Ok(s0), _) => Ok(Slots {
                newest: s0,
                slot0_is_newest: true,
            }),
            (Err(_), Ok(s1)) => Ok(Slots {
                newest: s1,
                slot0_is_newest: false,
            }),
            (Err(e0), Err(e1)) => Err(RecordError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "neither slot holds a valid record (file is {len} bytes; slot 0: {e0}; \
                     slot 1: {e1})"
                ),
            }),
        }
    }

    /// Copies the newest record into slot 0, under the write lock.
    fn repair_slot0(&self) -> Result<ConfigRecord, RecordError> {
        let _lock = WriteLock::acquire(&self.file, &self.path)?;
        // Another writer may have finished its slot 0 write while we waited for the lock.
        let slots = self.read_slots()?;
        if !slots.slot0_is_newest {
            let slot = encode_checked(&self.path, &slots.newest)?;
            self.file
                .write_all_at(&slot, SLOT0_OFFSET)
                .map_err(|e| io_error(&self.path, "pwrite of slot 0 (repair)", e))?;
            self.file
                .sync_data()
                .map_err(|e| io_error(&self.path, "fdatasync after slot 0 (repair)", e))?;
        }
        Ok(slots.newest)
    }
}

fn io_error(path: &Path, op: &'static str, source: io::Error) -> RecordError {
    RecordError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Encodes `r` and proves a reader would accept it: the check pairs with `decode_slot` on
/// the read side, so nothing is written that the next read would call corrupt.
fn encode_checked(path: &Path, r: &ConfigRecord) -> Result<[u8; SLOT_BYTES], RecordError> {
    let slot = encode_slot(r);
    match decode_slot_checked(&slot) {
        Ok(decoded) => {
            assert_eq!(&decoded, r, "encode_slot/decode_slot disagree");
            Ok(slot)
        }
        Err(reason) => Err(RecordError::InvalidRecord {
            path: path.to_path_buf(),
            reason,
        }),
    }
}

/// Fills `buf` from offset 0 until it is full or the file ends; returns the bytes read.
fn read_up_to(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Creates `path` holding `initial` with generation 1 in both slots, atomically: readers see
/// either no file or a complete one.
///
/// The temp file is published with `link`, not `rename`, because `link` never replaces: when
/// two processes (a starting server and a CLI call) create the file at once, the loser keeps
/// the winner's file instead of replacing it after the winner opened it, which would leave the
/// winner writing to an unlinked inode forever. Filesystems without hard links fall back to
/// `rename`.
fn create(path: &Path, initial: &ConfigRecord) -> Result<(), RecordError> {
    let slot = encode_checked(
        path,
        &ConfigRecord {
            generation: 1,
            ..*initial
        },
    )?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| RecordError::Io {
        path: path.to_path_buf(),
        op: "create",
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(temp_name);
    let result = write_temp(&temp, &slot).and_then(|()| publish_temp(path, &temp));
    if result.is_err() {
        // The temp file is ours alone and worthless after a failure; the error that matters
        // is the one already in `result`.
        let _ = fs::remove_file(&temp);
    }
    result?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "fsync of directory", e))
}

fn write_temp(temp: &Path, slot: &[u8; SLOT_BYTES]) -> Result<(), RecordError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)
        .map_err(|e| io_error(temp, "create", e))?;
    let mut both = [0u8; FILE_BYTES];
    both[..SLOT_BYTES].copy_from_slice(slot);
    both[SLOT_BYTES..].copy_from_slice(slot);
    file.write_all_at(&both, 0)
        .map_err(|e| io_error(temp, "pwrite", e))?;
    file.sync_all().map_err(|e| io_error(temp, "fsync", e))
}

fn publish_temp(path: &Path, temp: &Path) -> Result<(), RecordError> {
    match fs::hard_link(temp, path) {
        // Either we published it or another creator did first; both leave a complete file.
        Ok(()) => fs::remove_file(temp).map_err(|e| io_error(temp, "unlink of temp file", e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(temp).map_err(|e| io_error(temp, "unlink of temp file", e))
        }
        Err(_) => fs::rename(temp, path).map_err(|e| io_error(path, "rename", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(flags: u32, generation: u64) -> ConfigRecord {
        ConfigRecord {
            generation,
            ..ConfigRecord::new("https://registry.npmjs.org", flags)
        }
    }

    /// A writer that passes `budget` bytes through to the file, then fails: the bytes past
    /// the budget never reach the disk, as in a crash mid-write.
    struct TearingWrites {
        budget: usize,
    }

    impl SlotWriter for TearingWrites {
        fn write_at(&mut self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
            let n = bytes.len().min(self.budget);
            file.write_all_at(&bytes[..n], offset)?;
            self.budget -= n;
            if n < bytes.len() {
                return Err(io::Error::other("torn write (test)"));
            }
            Ok(())
        }

        fn sync_data(&mut self, file: &File) -> io::Result<()> {
            file.sync_data()
        }
    }

    /// A writer whose every fdatasync fails, as on a disk that went away.
    struct FailingSync;

    impl SlotWriter for FailingSync {
        fn write_at(&mut self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
            file.write_all_at(bytes, offset)
        }

        fn sync_data(&mut self, _file: &File) -> io::Result<()> {
            Err(io::Error::other("fdatasync failed (test)"))
        }
    }

    fn arb_record() -> impl Strategy<Value = ConfigRecord> {
        (
            0u8..=1,
            any::<u32>(),
            0u32..=FLAGS_STORABLE,
            0u8..=2,
            1u8..=255,
            1u8..=255,
            any::<u64>(),
        )
            .prop_map(
                |(v, hash, flags, mode, rows, cols, generation)| ConfigRecord {
                    config_version: v,
                    registry_hash: hash,
                    flags,
                    terminal_mode: TerminalMode::from_u8(mode).expect("0..=2"),
                    terminal_rows: rows,
                    terminal_cols: cols,
                    generation,
                },
            )
    }

    /// Re-seals `b` with a correct checksum, to reach the field checks behind it.
    fn reseal(mut b: [u8; SLOT_BYTES]) -> [u8; SLOT_BYTES] {
        let checksum = crc32c(&b[..CHECKSUM_OFFSET]);
        b[CHECKSUM_OFFSET..PADDING_OFFSET].copy_from_slice(&checksum.to_le_bytes());
        b
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn encode_puts_fields_at_spec_offsets() {
        let r = ConfigRecord {
            config_version: 1,
            registry_hash: 0x1122_3344,
            flags: 0x0000_0A05,
            terminal_mode: TerminalMode::Raw,
            terminal_rows: 50,
            terminal_cols: 132,
            generation: 0x0102_0304_0506_0708,
        };
        let b = encode_slot(&r);
        assert_eq!(&b[0..4], b"AREG");
        assert_eq!(b[4], 1);
        assert_eq!(&b[5..9], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[9..13], &[0x05, 0x0A, 0, 0]);
        assert_eq!(&b[13..16], &[2, 50, 132]);
        assert_eq!(&b[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[24..28], &crc32c(&b[..24]).to_le_bytes());
        assert_eq!(&b[28..32], &[0, 0, 0, 0]);
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let b = encode_slot(&record(FLAG_DEBUG | FLAG_READ_ONLY, 7));
        for offset in 0..SLOT_BYTES {
            for flip in 1..=255u8 {
                let mut bad = b;
                bad[offset] ^= flip;
                assert!(
                    decode_slot(&bad).is_err(),
                    "byte {offset} xor {flip:#04x} went undetected"
                );
            }
        }
    }

    #[test]
    fn decode_refuses_bad_fields_even_with_a_valid_checksum() {
        let good = encode_slot(&record(0, 1));
        let cases: [(usize, u8, SlotError); 7] = [
            (
                CONFIG_VERSION_OFFSET,
                2,
                SlotError::ConfigVersion { version: 2 },
            ),
            (
                TERMINAL_MODE_OFFSET,
                3,
                SlotError::TerminalMode { value: 3 },
            ),
            (TERMINAL_ROWS_OFFSET, 0, SlotError::ZeroRows),
            (TERMINAL_COLS_OFFSET, 0, SlotError::ZeroCols),
            (PADDING_OFFSET + 3, 1, SlotError::Padding),
            (
                FLAGS_OFFSET + 1,
                0x20,
                SlotError::ReservedFlags { bits: 0x2000 },
            ),
            (
                FLAGS_OFFSET + 3,
                0x80,
                SlotError::ReservedFlags { bits: 0x8000_0000 },
            ),
        ];
        for (offset, value, expected) in cases {
            let mut b = good;
            b[offset] = value;
            let b = reseal(b);
            assert_eq!(decode_slot_checked(&b), Err(expected), "offset {offset}");
        }
        let mut b = good;
        b[0] = b'X';
        assert_eq!(
            decode_slot_checked(&b),
            Err(SlotError::Magic { found: *b"XREG" })
        );
        assert_eq!(
            decode_slot_checked(&good[..16]),
            Err(SlotError::Length { len: 16 })
        );
        let legacy = reseal({
            let mut b = good;
            b[CONFIG_VERSION_OFFSET] = 0;
            b
        });
        assert_eq!(
            decode_slot_checked(&legacy).map(|r| r.config_version),
            Ok(0)
        );
    }

    #[test]
    fn canonical_registry_url_cases() {
        let cases = [
            ("https://registry.npmjs.org", "https://registry.npmjs.org"),
            ("https://registry.npmjs.org/", "https://registry.npmjs.org"),
            ("HTTPS://Registry.NPMJS.org//", "https://registry.npmjs.org"),
            ("  http://localhost:4873/  ", "http://localhost:4873"),
            ("https://Host.org/Some/Path/", "https://host.org/Some/Path"),
            ("https://User:Pw@Host.org/", "https://User:Pw@host.org"),
            ("https://host.org/?q=A/", "https://host.org/?q=A"),
            ("Localhost:4873/", "localhost:4873"),
            ("https://", "https://"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(canonical_registry_url(input), expected, "{input:?}");
        }
        assert_eq!(
            registry_hash("HTTPS://Registry.npmjs.org/"),
            registry_hash("https://registry.npmjs.org")
        );
    }

    #[test]
    fn new_record_defaults() {
        let r = ConfigRecord::new("https://registry.npmjs.org/", FLAG_DEBUG);
        assert_eq!(r.config_version, 1);
        assert_eq!((r.terminal_rows, r.terminal_cols), (24, 80));
        assert_eq!(r.terminal_mode, TerminalMode::Disabled);
        assert_eq!(r.generation, 0);
        assert_eq!(r.registry_hash, registry_hash("https://registry.npmjs.org"));
        assert!(r.has(FLAG_DEBUG) && !r.has(FLAG_READ_ONLY));
        assert!(!r.has(FLAG_DEBUG | FLAG_READ_ONLY));
        for mode in [
            TerminalMode::Disabled,
            TerminalMode::Cooked,
            TerminalMode::Raw,
        ] {
            assert_eq!(TerminalMode::from_name(mode.name()), Some(mode));
            assert_eq!(TerminalMode::from_u8(mode as u8), Some(mode));
        }
    }

    /// Goal: a write torn at any byte leaves a file that opens to the old or the new record.
    /// Method: run the real `write_record` protocol with a writer that stops after `budget`
    /// bytes, for every budget from 0 to both slots, then reopen the file from scratch.
    #[test]
    fn torn_write_at_every_byte_yields_old_or_new() {
        let dir = tempfile::tempdir().expect("temp dir");
        for budget in 0..=FILE_BYTES {
            let path = dir.path().join(format!("config-{budget}.bin"));
            let (mut file, _) = ConfigFile::open_or_create(&path, &record(0, 0)).expect("create");
            let old = file.write(&record(FLAG_DEBUG, 0)).expect("write old");
            let new = ConfigRecord {
                generation: old.generation + 1,
                ..record(FLAG_READ_ONLY | FLAG_PRIVATE_REGISTRY, 0)
            };
            let torn = file.write_with(&new, &mut TearingWrites { budget });
            assert_eq!(torn.is_ok(), budget == FILE_BYTES, "budget {budget}");
            drop(file);

            let (reopened, got) = ConfigFile::open_or_create(&path, &record(0, 0)).expect("reopen");
            assert!(got == old || got == new, "budget {budget}: got {got:?}");
            if budget >= SLOT_BYTES {
                assert_eq!(got, new, "budget {budget}: slot 1 was complete");
            }
            if budget == 0 {
                assert_eq!(got, old);
            }
            assert_eq!(reopened.read().expect("read"), got);
            let bytes = fs::read(&path).expect("read file");
            assert_eq!(&bytes[..SLOT_BYTES], &encode_slot(&got), "slot 0 repaired");
        }
    }

    #[test]
    fn failed_write_poisons_later_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.bin");
        let (mut file, first) = ConfigFile::open_or_create(&path, &record(0, 0)).expect("create");
        let err = file
            .write_with(&record(FLAG_DEBUG, 0), &mut FailingSync)
            .expect_err("sync fails");
        assert!(
            err.to_string().contains("fdatasync after slot 1 failed"),
            "{err}"
        );
        let err = file.write(&record(FLAG_DEBUG, 0)).expect_err("poisoned");
        assert!(matches!(err, RecordError::Poisoned { .. }), "{err}");
        assert!(err.to_string().contains("stopped until restart"), "{err}");
        // A fresh open (the restart) sees the written-but-unsynced record or the first one.
        let (_, got) = ConfigFile::open_or_create(&path, &record(0, 0)).expect("reopen");
        assert!(
            got == first || got.generation == first.generation + 1,
            "{got:?}"
        );
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(r in arb_record()) {
            prop_assert_eq!(decode_slot(&encode_slot(&r)).expect("valid record"), r);
        }

        #[test]
        fn pack_unpack_round_trip(r in arb_record()) {
            prop_assert_eq!(unpack(pack(&r), r.generation), r);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..=40)) {
            let _ = decode_slot(&bytes);
        }

        #[test]
        fn canonical_url_is_idempotent(url in "[a-zA-Z:/@.?#0-9 ]{0,30}") {
            let once = canonical_registry_url(&url);
            prop_assert_eq!(canonical_registry_url(&once), once);
        }
    }
}
