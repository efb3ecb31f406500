//! Every bound the engine enforces, as a const. Going over a limit is an error for the client,
//! never a panic.

/// npm's maximum package name length, scope included.
pub const PACKAGE_NAME_BYTES_MAX: usize = 214;
/// Longest version string accepted (node-semver's MAX_LENGTH).
pub const VERSION_BYTES_MAX: usize = 256;
/// Longest dist-tag name accepted.
pub const DIST_TAG_BYTES_MAX: usize = 128;
/// Largest tarball accepted on publish, in bytes (decoded).
pub const TARBALL_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most versions one package may hold.
pub const VERSIONS_PER_PACKAGE_MAX: usize = 10_000;
/// Longest excerpt of a rejected input quoted back in an error message, in characters; the
/// rest is only counted, so an error message stays short whatever the client sent.
pub const ERROR_INPUT_CHARS_MAX: usize = 100;
/// Largest major, minor or patch number a version may have: JavaScript's
/// `Number.MAX_SAFE_INTEGER`, the largest node-semver (and so every npm client) accepts.
pub const VERSION_COMPONENT_MAX: u64 = (1 << 53) - 1;

/// Most threads one group commit uses to make its blobs durable in parallel.
pub const BLOB_WRITE_THREADS_MAX: usize = 16;

/// Largest tarball stored inline: in its package's shard (table `blob_inline`), written in
/// the same redb transaction as the version that names it, instead of as a file of the blob
/// store. A file per small tarball cost about 44% of the server's CPU in a publish storm of
/// ~3 KB tarballs (inode allocation, and the file and directory fsyncs); the shard's commit
/// is fsynced anyway. Larger tarballs stay files, so shard files do not grow by megabytes per
/// version.
pub const INLINE_BLOB_BYTES_MAX: usize = 64 * 1024;
/// Disk bytes counted per inline tarball byte by the free-space check: redb allocates pages
/// in powers of two, so a value may take up to twice its size.
pub const INLINE_BLOB_SPACE_FACTOR: u64 = 2;

/// Most decompressed bytes `tarball::inspect` reads by default: tar headers, file data and
/// padding.
pub const TARBALL_UNPACKED_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Most tar entries (headers of any kind) in a published tarball by default.
pub const TARBALL_ENTRY_COUNT_MAX: u64 = 100_000;
/// Largest `package.json` in a published tarball by default.
pub const TARBALL_PACKAGE_JSON_BYTES_MAX: u64 = 1024 * 1024;
/// Largest GNU long name or PAX header by default: node-tar ignores larger ones
/// (`maxMetaEntrySize`), so they are refused here rather than applied.
pub const TARBALL_EXTENSION_BYTES_MAX: u64 = 1024 * 1024;
/// Most gzip members: npm writes one. Each member costs a decoder set-up, and empty members
/// add no decompressed bytes, so without this bound a tarball of tiny members would cost CPU
/// in proportion to its compressed size with nothing for the byte limit to count.
pub const TARBALL_GZIP_MEMBER_COUNT_MAX: u32 = 64;

// An incompressible tarball under the publish limit must fit once unpacked.
const _: () = assert!(TARBALL_UNPACKED_BYTES_MAX >= TARBALL_BYTES_MAX as u64);
const _: () = assert!(INLINE_BLOB_BYTES_MAX < TARBALL_BYTES_MAX);
const _: () = assert!(TARBALL_PACKAGE_JSON_BYTES_MAX <= TARBALL_UNPACKED_BYTES_MAX);
const _: () = assert!(TARBALL_EXTENSION_BYTES_MAX <= TARBALL_UNPACKED_BYTES_MAX);
