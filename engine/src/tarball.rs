//! Reading untrusted npm tarballs (gzip + tar) without unpacking them: `inspect` streams the
//! archive once and returns what the registry needs from it, the file count, the unpacked size
//! and the bytes of the package's `package.json`.
//!
//! Bounds: every decompressed byte is counted as it is read, and reading stops past
//! `unpacked_bytes_max`, so a gzip bomb costs at most that much CPU (and at most
//! `GZIP_MEMBER_COUNT_MAX` gzip members are set up). Memory stays at one `package.json`
//! (`package_json_bytes_max`) plus the extension headers of one entry (each at most
//! `extension_bytes_max`): the tar crate is used only for framing (raw entries), and the GNU
//! long names and PAX headers it would otherwise buffer whole are read here, bounded.
//!
//! The registry must see exactly the files an npm client will install, or a tarball could carry
//! one `package.json` for the registry and another for the client ("manifest confusion"). Tar
//! readers disagree on malformed archives, so anything that npm's reader (node-tar) could read
//! differently from this one is refused rather than interpreted:
//! - only file, directory, link, GNU long name/link and PAX entries, with canonical numeric
//!   fields (octal digits, space or NUL padded) and string fields (NUL padded after the first
//!   NUL);
//! - a PAX `size` must equal the header's size and come right before its entry (node-tar
//!   versions frame by one or the other, and apply it to the next header of any kind); a global
//!   PAX header may not set `size`; every header has a name; an entry takes its path from one
//!   place (PAX path, GNU long name or header), and its header path may not name package.json
//!   unless that is its path (a reader that drops the PAX record would install it there);
//! - a directory has no body, a file path does not end in `/` (node-tar turns both into bodiless
//!   directories and would read their bodies as headers), a link type is the only one with a
//!   link name;
//! - the block after the end-of-archive block is zero too (node-tar keeps reading after a
//!   single zero block), gzip members follow each other as in Node's zlib, and the whole gzip
//!   stream must decode.
//!
//! An entry path must be valid UTF-8 without NUL, relative, and free of `..`; `\` counts as a
//! separator too, as it does for npm on Windows.
//!
//! The package.json is the one npm installs at the package root: npm unpacks with the first path
//! component stripped, so it is `<any dir>/package.json` (`package/` for npm-made tarballs). A
//! second entry that would land on the same file, on any OS (ASCII or Unicode case folded), is
//! refused.
//!
//! Pure: no I/O beyond the input slice. Called by `publish` on every version's tarball.

use std::cell::Cell;
use std::io::{self, Read};

use flate2::bufread::GzDecoder;

// The default bounds live in `limits.rs` with every other bound; re-exported under their
// short names for this module's users.
pub use crate::limits::{
    TARBALL_ENTRY_COUNT_MAX as ENTRY_COUNT_MAX, TARBALL_EXTENSION_BYTES_MAX as EXTENSION_BYTES_MAX,
    TARBALL_GZIP_MEMBER_COUNT_MAX as GZIP_MEMBER_COUNT_MAX,
    TARBALL_PACKAGE_JSON_BYTES_MAX as PACKAGE_JSON_BYTES_MAX,
    TARBALL_UNPACKED_BYTES_MAX as UNPACKED_BYTES_MAX,
};

/// Size of a tar block: headers and bodies are whole blocks.
const BLOCK_BYTES: usize = 512;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Longest path quoted back in an error message, in characters.
const PATH_CHARS_MAX: usize = 200;

// The tar header fields read here (POSIX ustar layout, byte offsets).
const NAME: std::ops::Range<usize> = 0..100;
const SIZE: std::ops::Range<usize> = 124..136;
const CHECKSUM: std::ops::Range<usize> = 148..156;
const TYPE_FLAG: usize = 156;
const LINK_NAME: std::ops::Range<usize> = 157..257;
const MAGIC_VERSION: std::ops::Range<usize> = 257..265;
const USTAR_MAGIC_VERSION: &[u8; 8] = b"ustar\x0000";
const PREFIX_START: usize = 345;
/// node-tar reads a 155-byte prefix when this byte is set, else 130 bytes (star's atime and
/// ctime follow).
const PREFIX_LONG_MARKER: usize = PREFIX_START + 130;
const PREFIX_END: usize = PREFIX_START + 155;
const _: () = assert!(PREFIX_END <= BLOCK_BYTES && TYPE_FLAG == CHECKSUM.end);

/// The bounds `inspect` enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TarballLimits {
    /// Most decompressed bytes read, counted as they are read.
    pub unpacked_bytes_max: u64,
    /// Most tar entries, extension headers included.
    pub entry_count_max: u64,
    /// Largest `package.json`.
    pub package_json_bytes_max: u64,
    /// Largest GNU long name or PAX header.
    pub extension_bytes_max: u64,
}

impl TarballLimits {
    /// The registry's limits for a published tarball.
    pub const DEFAULT: TarballLimits = TarballLimits {
        unpacked_bytes_max: UNPACKED_BYTES_MAX,
        entry_count_max: ENTRY_COUNT_MAX,
        package_json_bytes_max: PACKAGE_JSON_BYTES_MAX,
        extension_bytes_max: EXTENSION_BYTES_MAX,
    };
}

impl Default for TarballLimits {
    fn default() -> TarballLimits {
        TarballLimits::DEFAULT
    }
}

/// What `inspect` reports about a readable tarball.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarballSummary {
    /// Regular files in the archive (npm's `dist.fileCount`).
    pub file_count: u64,
    /// Sum of the regular files' sizes in bytes (npm's `dist.unpackedSize`).
    pub unpacked_size: u64,
    /// The bytes of `<dir>/package.json`, unparsed.
    pub package_json: Vec<u8>,
}

/// Why a tarball was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarballError {
    #[error("the tarball is not gzip-compressed")]
    NotGzip,
    #[error("the tarball's gzip data is corrupt or truncated: {detail}")]
    Gzip { detail: String },
    #[error("the tarball's tar data is corrupt or truncated: {detail}")]
    Tar { detail: String },
    #[error("the tarball unpacks to more than {max} bytes")]
    UnpackedTooLarge { max: u64 },
    #[error("the tarball has more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("the tarball has more than {max} gzip members")]
    TooManyGzipMembers { max: u32 },
    #[error("tar extension header of {size} bytes exceeds the limit of {max} bytes")]
    ExtensionTooLarge { size: u64, max: u64 },
    #[error("tar entry path {path:?} is not valid UTF-8")]
    NonUtf8Path { path: String },
    #[error("tar entry path {path:?} {why}")]
    UnsafePath { path: String, why: &'static str },
    #[error("tar entry {path:?} has type {kind:?}, which npm tarballs do not use")]
    UnsupportedEntry { path: String, kind: char },
    #[error("tar entry {path:?} is ambiguous ({why}): tar readers would disagree on it")]
    Ambiguous { path: String, why: &'static str },
    #[error(
        "the tarball has data after a single end-of-archive block: tar readers disagree on it"
    )]
    DataAfterEnd,
    #[error("the tarball has no package.json in its top-level directory")]
    MissingPackageJson,
    #[error("the tarball has two package.json files ({first:?} and {second:?})")]
    DuplicatePackageJson { first: String, second: String },
    #[error("package.json of {size} bytes exceeds the limit of {max} bytes")]
    PackageJsonTooLarge { size: u64, max: u64 },
}

/// Reads the gzip'd tar archive `gz` within `limits` and summarizes it (module docs: what is
/// refused and why). Never writes anything; CPU is linear in the decompressed bytes read, and
/// memory is bounded by the limits.
///
/// # Errors
/// The first problem found, as a `TarballError`.
pub fn inspect(gz: &[u8], limits: &TarballLimits) -> Result<TarballSummary, TarballError> {
    if !gz.starts_with(&GZIP_MAGIC) {
        return Err(TarballError::NotGzip);
    }
    let meter = Meter::new(limits.unpacked_bytes_max);
    let mut archive = tar::Archive::new(Metered {
        inner: Members::new(gz, &meter),
        meter: &meter,
    });
    let mut reader = Reader {
        limits,
        summary: TarballSummary {
            file_count: 0,
            unpacked_size: 0,
            package_json: Vec::new(),
        },
        manifest_path: None,
        found_manifest: false,
    };
    let entries = archive.entries().map_err(|e| meter.error(&e))?.raw(true);
    let mut pending = Pending::default();
    let mut entry_count: u64 = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| meter.error(&e))?;
        entry_count += 1;
        if entry_count > limits.entry_count_max {
            return Err(TarballError::TooManyEntries {
                max: limits.entry_count_max,
            });
        }
        reader
            .entry(&mut entry, &mut pending)
            .map_err(|e| e.into_tarball_error(&meter))?;
    }
    if pending.is_some() {
        return Err(TarballError::Tar {
            detail: "extension headers at the end of the archive describe no entry".into(),
        });
    }
    let mut rest = archive.into_inner();
    check_end(&mut rest).map_err(|e| e.into_tarball_error(&meter))?;
    if !reader.found_manifest {
        return Err(TarballError::MissingPackageJson);
    }
    Ok(reader.summary)
}

/// Counts decompressed bytes and remembers why the stream failed, so an `io::Error` the tar
/// crate passes on (or wraps) maps back to the right `TarballError`.
struct Meter {
    bytes: Cell<u64>,
    max: u64,
    gzip_error: Cell<Option<String>>,
    too_many_members: Cell<bool>,
}

impl Meter {
    fn new(max: u64) -> Meter {
        Meter {
            bytes: Cell::new(0),
            max,
            gzip_error: Cell::new(None),
            too_many_members: Cell::new(false),
        }
    }

    fn over(&self) -> bool {
        self.bytes.get() > self.max
    }

    /// The `TarballError` for a failed read of the archive.
    fn error(&self, e: &io::Error) -> TarballError {
        if self.over() {
            return TarballError::UnpackedTooLarge { max: self.max };
        }
        if self.too_many_members.get() {
            return TarballError::TooManyGzipMembers {
                max: GZIP_MEMBER_COUNT_MAX,
            };
        }
        if let Some(detail) = self.gzip_error.take() {
            return TarballError::Gzip { detail };
        }
        TarballError::Tar {
            detail: e.to_string(),
        }
    }
}

/// The decompressed stream as the tar reader sees it: fails once more than `meter.max` bytes
/// came out.
struct Metered<'m, R> {
    inner: R,
    meter: &'m Meter,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.meter.over() {
            return Err(io::Error::other("unpacked size limit exceeded"));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                self.meter.gzip_error.set(Some(e.to_string()));
                return Err(e);
            }
        };
        self.meter.bytes.set(self.meter.bytes.get() + n as u64);
        if self.meter.over() {
            return Err(io::Error::other("unpacked size limit exceeded"));
        }
        Ok(n)
    }
}

/// Gzip members one after the other, as Node's zlib reads them (and so npm): after a member, a
/// zero byte or the end of input ends the stream (trailing zeros are padding); anything else must
/// be another member, up to `GZIP_MEMBER_COUNT_MAX`.
struct Members<'m, 'a> {
    member: GzDecoder<&'a [u8]>,
    member_count: u32,
    done: bool,
    meter: &'m Meter,
}

impl<'m, 'a> Members<'m, 'a> {
    fn new(gz: &'a [u8], meter: &'m Meter) -> Members<'m, 'a> {
        Members {
            member: GzDecoder::new(gz),
            member_count: 1,
            done: false,
            meter,
        }
    }
}

impl Read for Members<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Each turn either returns or starts a member on strictly less input (a member takes at
        // least its 10-byte header), so the loop ends.
        while !self.done && !buf.is_empty() {
            let n = self.member.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            let rest: &[u8] = self.member.get_ref();
            if rest.first().is_none_or(|&b| b == 0) {
                self.done = true;
            } else if self.member_count == GZIP_MEMBER_COUNT_MAX {
                self.meter.too_many_members.set(true);
                return Err(io::Error::other("too many gzip members"));
            } else {
                self.member_count += 1;
                self.member = GzDecoder::new(rest);
            }
        }
        Ok(0)
    }
}

/// A failure while reading one entry: either the stream failed (mapped through the meter) or
/// the entry itself is refused.
enum EntryError {
    Io(io::Error),
    Refused(TarballError),
}

impl EntryError {
    fn into_tarball_error(self, meter: &Meter) -> TarballError {
        match self {
            EntryError::Io(e) => meter.error(&e),
            EntryError::Refused(e) => e,
        }
    }
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> EntryError {
        EntryError::Io(e)
    }
}

impl From<TarballError> for EntryError {
    fn from(e: TarballError) -> EntryError {
        EntryError::Refused(e)
    }
}

/// Extension headers read but not yet applied: they describe the next real entry.
#[derive(Default)]
struct Pending {
    /// A GNU long name (`L`), cut at its first NUL.
    long_name: Option<Vec<u8>>,
    /// A GNU long link name (`K`) was seen.
    long_link: bool,
    /// The records of a PAX header (`x`).
    pax: Option<Vec<PaxRecord>>,
}

impl Pending {
    fn is_some(&self) -> bool {
        self.long_name.is_some() || self.long_link || self.pax.is_some()
    }
}

/// One `key=value` record of a PAX header.
struct PaxRecord {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// The state of one pass over the entries.
struct Reader<'l> {
    limits: &'l TarballLimits,
    summary: TarballSummary,
    /// Path of the first entry that npm would unpack to the root `package.json`.
    manifest_path: Option<String>,
    found_manifest: bool,
}

/// How an entry's type flag is treated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Directory,
    Link,
    LongName,
    LongLink,
    Pax,
    GlobalPax,
}

impl Kind {
    fn of(flag: u8) -> Option<Kind> {
        match flag {
            b'0' | 0 | b'7' => Some(Kind::File),
            b'5' => Some(Kind::Directory),
            b'1' | b'2' => Some(Kind::Link),
            b'L' => Some(Kind::LongName),
            b'K' => Some(Kind::LongLink),
            b'x' => Some(Kind::Pax),
            b'g' => Some(Kind::GlobalPax),
            _ => None,
        }
    }
}

impl Reader<'_> {
    /// Checks one raw entry: extension headers go to `pending`, real entries consume it.
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pending: &mut Pending,
    ) -> Result<(), EntryError> {
        let header: [u8; BLOCK_BYTES] = *entry.header().as_bytes();
        let header_path = header_path(&header);
        let ambiguous = |why| TarballError::Ambiguous {
            path: quote(&header_path),
            why,
        };
        let flag = header[TYPE_FLAG];
        let kind = Kind::of(flag).ok_or_else(|| TarballError::UnsupportedEntry {
            path: quote(&header_path),
            kind: char::from(flag),
        })?;
        if !octal_is_canonical(&header[SIZE], false) || !octal_is_canonical(&header[CHECKSUM], true)
        {
            return Err(ambiguous("a size or checksum field is not plain octal").into());
        }
        if !nul_padded(&header[NAME])
            || !nul_padded(&header[LINK_NAME])
            || (is_ustar(&header) && !nul_padded(&header[PREFIX_START..prefix_end(&header)]))
        {
            return Err(ambiguous("a name field has bytes after its NUL").into());
        }
        // node-tar skips a header without a path and reads its body as headers.
        if header_path.is_empty() {
            return Err(ambiguous("a header has no name").into());
        }
        let has_link_name = header[LINK_NAME.start] != 0;
        if has_link_name != (kind == Kind::Link) && !matches!(kind, Kind::Pax | Kind::GlobalPax) {
            return Err(ambiguous("only links have a link name").into());
        }
        let size = entry.header().entry_size()?;
        match kind {
            Kind::LongName | Kind::LongLink | Kind::Pax | Kind::GlobalPax => {
                let data = self.read_extension(entry, size)?;
                pending.add(kind, data).map_err(ambiguous)?;
                Ok(())
            }
            Kind::File | Kind::Directory | Kind::Link => {
                let pending = std::mem::take(pending);
                self.member(entry, kind, &header_path, size, pending)
            }
        }
    }

    /// Checks a file, directory or link and counts it; reads it when it is the package.json.
    fn member<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: Kind,
        header_path: &[u8],
        size: u64,
        pending: Pending,
    ) -> Result<(), EntryError> {
        let ambiguous = |why| TarballError::Ambiguous {
            path: quote(header_path),
            why,
        };
        let path = resolve_path(header_path, size, pending)?;
        check_path(&path)?;
        match kind {
            Kind::Directory if size != 0 => {
                return Err(ambiguous("a directory entry has a body").into());
            }
            Kind::File if path.ends_with('/') => {
                return Err(ambiguous("a file path ends with '/'").into());
            }
            _ => {}
        }
        if kind == Kind::File {
            self.summary.file_count += 1;
            self.summary.unpacked_size = self.summary.unpacked_size.saturating_add(size);
        }
        let is_manifest = |p: &str| root_file_name(p).is_some_and(is_package_json);
        // A reader that drops a PAX record (node-tar drops one whose UTF-8 it splits between
        // two chunks) falls back to the header's own path: both must agree on package.json.
        let fallback = String::from_utf8_lossy(header_path);
        if is_manifest(&fallback) && fallback != path {
            return Err(ambiguous("its header and extended paths disagree on package.json").into());
        }
        if !is_manifest(&path) {
            return Ok(());
        }
        if let Some(first) = &self.manifest_path {
            return Err(TarballError::DuplicatePackageJson {
                first: first.clone(),
                second: quote(path.as_bytes()),
            }
            .into());
        }
        self.manifest_path = Some(quote(path.as_bytes()));
        if kind == Kind::File && root_file_name(&path) == Some("package.json") {
            let max = self.limits.package_json_bytes_max;
            if size > max {
                return Err(TarballError::PackageJsonTooLarge { size, max }.into());
            }
            self.summary.package_json = read_exactly(entry, size)?;
            self.found_manifest = true;
        }
        Ok(())
    }

    /// Reads a GNU long name or PAX header, bounded by `extension_bytes_max`.
    fn read_extension<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        size: u64,
    ) -> Result<Vec<u8>, EntryError> {
        let max = self.limits.extension_bytes_max;
        if size > max {
            return Err(TarballError::ExtensionTooLarge { size, max }.into());
        }
        read_exactly(entry, size)
    }
}

impl Pending {
    /// Records an extension header's `data`; a second one of a kind is ambiguous (readers
    /// differ on which wins).
    fn add(&mut self, kind: Kind, mut data: Vec<u8>) -> Result<(), &'static str> {
        // node-tar applies a pending PAX size to the next header of any kind, extension headers
        // included, and frames it by that size; the tar crate frames each by its own.
        if self
            .pax
            .as_ref()
            .is_some_and(|p| p.iter().any(|r| r.key == b"size"))
        {
            return Err("an extension header follows a PAX size");
        }
        match kind {
            Kind::LongName => {
                if self.long_name.is_some() {
                    return Err("two GNU long names for one entry");
                }
                if !nul_padded(&data) {
                    return Err("a GNU long name has bytes after its NUL");
                }
                data.truncate(until_nul(&data).len());
                self.long_name = Some(data);
            }
            Kind::LongLink => {
                // Link targets are not followed; the name is only bounded and consumed.
                if self.long_link {
                    return Err("two GNU long link names for one entry");
                }
                self.long_link = true;
            }
            Kind::Pax => {
                if self.pax.is_some() {
                    return Err("two PAX headers for one entry");
                }
                self.pax = Some(parse_pax(&data).ok_or("malformed PAX records")?);
            }
            Kind::GlobalPax => {
                let records = parse_pax(&data).ok_or("malformed PAX records")?;
                if records.iter().any(|r| r.key == b"size") {
                    return Err("a global PAX header sets size");
                }
            }
            Kind::File | Kind::Directory | Kind::Link => {
                unreachable!("only extension headers are pending")
            }
        }
        Ok(())
    }
}

/// The path of a real entry: from a PAX `path`, else a GNU long name, else its header. A PAX
/// `size` must agree with the header's.
fn resolve_path(header_path: &[u8], size: u64, pending: Pending) -> Result<String, TarballError> {
    let ambiguous = |why| TarballError::Ambiguous {
        path: quote(header_path),
        why,
    };
    let mut pax_path: Option<Vec<u8>> = None;
    for record in pending.pax.unwrap_or_default() {
        match record.key.as_slice() {
            b"size" => {
                let digits =
                    !record.value.is_empty() && record.value.iter().all(u8::is_ascii_digit);
                let value = std::str::from_utf8(&record.value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                if !digits || value != Some(size) {
                    return Err(ambiguous("its PAX size and header size differ"));
                }
            }
            b"path" => {
                if pax_path.is_some() {
                    return Err(ambiguous("two PAX paths"));
                }
                // node-tar turns an all-digit value into a number and then fails on it.
                if record.value.iter().all(u8::is_ascii_digit) {
                    return Err(ambiguous("a PAX path of digits only"));
                }
                pax_path = Some(record.value);
            }
            _ => {}
        }
    }
    let path = match (pax_path, pending.long_name) {
        (Some(_), Some(_)) => return Err(ambiguous("both a PAX path and a GNU long name")),
        (Some(p), None) | (None, Some(p)) => p,
        (None, None) => header_path.to_vec(),
    };
    String::from_utf8(path).map_err(|e| TarballError::NonUtf8Path {
        path: quote(e.as_bytes()),
    })
}

/// Reads an entry's whole body of `size` bytes (already bounded by the caller).
fn read_exactly<R: Read>(entry: &mut tar::Entry<'_, R>, size: u64) -> Result<Vec<u8>, EntryError> {
    let capacity = usize::try_from(size).expect("size is bounded by a limit that fits in memory");
    let mut out = Vec::with_capacity(capacity);
    entry.take(size).read_to_end(&mut out)?;
    if out.len() != capacity {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "entry body cut short").into());
    }
    Ok(out)
}

/// After the end-of-archive block: the next block must be zero too (node-tar reads on after a
/// single zero block), and the rest of the gzip stream must decode (a truncated or corrupt
/// stream fails npm's unpack too). Reads at most what the meter allows.
fn check_end<R: Read>(rest: &mut R) -> Result<(), EntryError> {
    let mut block = [0u8; BLOCK_BYTES];
    let mut filled = 0;
    while filled < BLOCK_BYTES {
        let n = rest.read(&mut block[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if block.iter().any(|&b| b != 0) {
        return Err(TarballError::DataAfterEnd.into());
    }
    io::copy(rest, &mut io::sink())?;
    Ok(())
}

/// The header's own path as node-tar reads it: the name, with the ustar prefix before it
/// (155 bytes when the prefix's byte 130 is set, else 130), each cut at its first NUL.
fn header_path(header: &[u8; BLOCK_BYTES]) -> Vec<u8> {
    let name = until_nul(&header[NAME]);
    if !is_ustar(header) {
        return name.to_vec();
    }
    let prefix = until_nul(&header[PREFIX_START..prefix_end(header)]);
    if prefix.is_empty() && header[PREFIX_LONG_MARKER] == 0 {
        return name.to_vec();
    }
    let mut path = Vec::with_capacity(prefix.len() + 1 + name.len());
    path.extend_from_slice(prefix);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

fn is_ustar(header: &[u8; BLOCK_BYTES]) -> bool {
    &header[MAGIC_VERSION] == USTAR_MAGIC_VERSION
}

fn prefix_end(header: &[u8; BLOCK_BYTES]) -> usize {
    if header[PREFIX_LONG_MARKER] == 0 {
        PREFIX_LONG_MARKER
    } else {
        PREFIX_END
    }
}

fn until_nul(field: &[u8]) -> &[u8] {
    &field[..field.iter().position(|&b| b == 0).unwrap_or(field.len())]
}

/// True when nothing but NULs follows the first NUL: readers that cut at the NUL and readers
/// that cut at the NUL's line (node-tar's `/\0.*/`) then agree.
fn nul_padded(field: &[u8]) -> bool {
    let text = until_nul(field).len();
    field[text..].iter().all(|&b| b == 0)
}

/// True for `spaces, octal digits, padding` where padding is spaces and NULs. node-tar reads 12
/// bytes from the 8-byte checksum field, up to a NUL, so there the padding must not be empty.
fn octal_is_canonical(field: &[u8], needs_terminator: bool) -> bool {
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let digits = field[start..]
        .iter()
        .take_while(|b| (b'0'..=b'7').contains(*b))
        .count();
    let padding = &field[start + digits..];
    digits > 0
        && (!needs_terminator || !padding.is_empty())
        && padding.iter().all(|&b| b == b' ' || b == 0)
}

/// Parses PAX records (`<len> <key>=<value>\n`) strictly: a decimal length without sign or
/// leading zero that counts the whole record, a non-empty key, no newline inside, UTF-8 text.
/// Anything node-tar's line-based parser could read differently is `None`.
fn parse_pax(data: &[u8]) -> Option<Vec<PaxRecord>> {
    std::str::from_utf8(data).ok()?;
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let digits = &rest[..space];
        if digits.is_empty()
            || digits.len() > 8
            || digits[0] == b'0'
            || !digits.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        let len: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
        if len <= space + 1 || len > rest.len() {
            return None;
        }
        let (record, tail) = rest.split_at(len);
        let body = record[space + 1..].strip_suffix(b"\n")?;
        if body.contains(&b'\n') {
            return None;
        }
        let eq = body.iter().position(|&b| b == b'=')?;
        if eq == 0 {
            return None;
        }
        records.push(PaxRecord {
            key: body[..eq].to_vec(),
            value: body[eq + 1..].to_vec(),
        });
        rest = tail;
    }
    Some(records)
}

/// Refuses paths that are empty, contain NUL, are absolute (`/`, `\` or a drive letter) or have
/// a `..` component (`/` and `\` both separate components).
fn check_path(path: &str) -> Result<(), TarballError> {
    let unsafe_path = |why| TarballError::UnsafePath {
        path: quote(path.as_bytes()),
        why,
    };
    if path.is_empty() {
        return Err(unsafe_path("is empty"));
    }
    if path.contains('\0') {
        return Err(unsafe_path("contains NUL"));
    }
    let bytes = path.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if path.starts_with(['/', '\\']) || drive {
        return Err(unsafe_path("is absolute"));
    }
    if path.split(['/', '\\']).any(|part| part == "..") {
        return Err(unsafe_path("contains '..'"));
    }
    Ok(())
}

/// The file name an entry would get at the package root once npm strips the first path
/// component, if it lands there: `<dir>/name`, with empty and `.` components ignored as path
/// resolution ignores them.
fn root_file_name(path: &str) -> Option<&str> {
    let mut parts = path
        .split(['/', '\\'])
        .skip(1)
        .filter(|p| !p.is_empty() && *p != ".");
    let name = parts.next()?;
    parts.next().is_none().then_some(name)
}

/// True when `name` is `package.json` on a case-insensitive file system (macOS, Windows),
/// Unicode case folding included (the Kelvin sign folds to `k`).
fn is_package_json(name: &str) -> bool {
    name.eq_ignore_ascii_case("package.json")
        || name.to_lowercase() == "package.json"
        || name.to_uppercase() == "PACKAGE.JSON"
}

/// A path for an error message: lossy UTF-8, at most `PATH_CHARS_MAX` characters.
fn quote(path: &[u8]) -> String {
    String::from_utf8_lossy(path)
        .chars()
        .take(PATH_CHARS_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields() {
        assert!(octal_is_canonical(b"0000644\0", true));
        assert!(octal_is_canonical(b" 12345 \0", true));
        assert!(octal_is_canonical(b"00000000012\0", false));
        assert!(octal_is_canonical(b"000000000012", false));
        assert!(!octal_is_canonical(b"00000012", true), "no terminator");
        assert!(!octal_is_canonical(b"0012 4\0\0", true));
        assert!(!octal_is_canonical(b"\0\0\0\0\0\0\0\0", true));
        assert!(!octal_is_canonical(b"+0001234\0\0\0\0", false));
        assert!(!octal_is_canonical(b"\x80\0\0\0\0\0\0\0\0\0\0\x10", false));
    }

    #[test]
    fn pax_records() {
        let records = parse_pax(b"21 path=package/a.js\n11 size=12\n").unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key, b"path");
        assert_eq!(records[0].value, b"package/a.js");
        assert_eq!(records[1].value, b"12");
        assert!(parse_pax(b"").unwrap().is_empty());
        for bad in [
            &b"021 path=package/a.js\n"[..],
            b"22 path=package/a.js\n",
            b"21 path=package/a.js",
            b"+21 path=package/a.js\n",
            b"12 path=a\nb\n",
            b"9 =value\n",
            b"9 path=\xff\n",
            b"21 path=package/a.js\n\0\0",
        ] {
            assert!(
                parse_pax(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn paths() {
        assert!(check_path("package/lib/a.js").is_ok());
        assert!(check_path("package/..a/b..").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "\\x",
            "C:x",
            "package/../x",
            "..",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn root_files() {
        assert_eq!(root_file_name("package/package.json"), Some("package.json"));
        assert_eq!(root_file_name("./package.json"), Some("package.json"));
        assert_eq!(root_file_name("x//./package.json"), Some("package.json"));
        assert_eq!(root_file_name("x\\package.json"), Some("package.json"));
        assert_eq!(root_file_name("package.json"), None);
        assert_eq!(root_file_name("package/lib/package.json"), None);
        assert!(is_package_json("PACKAGE.json"));
        assert!(is_package_json("pac\u{212a}age.json"));
        assert!(!is_package_json("package.json5"));
    }
}
