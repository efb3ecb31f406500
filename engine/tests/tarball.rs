//! `engine::tarball::inspect` on real, hand-built and hostile tarballs.
//!
//! Method: archives are built block by block (`Tar`), so every malformation a hostile client
//! could send is reachable, then gzip'd. The proptests run `check`, the body of the fuzz target
//! `fuzz/fuzz_targets/tarball.rs`, on arbitrary bytes and on damaged copies of a valid tarball.
//! The corpus test reads every real tarball in `shared/corpus/` (skipped when it is absent).

use std::io::{Read, Write};

use engine::tarball::{inspect, TarballError, TarballLimits, TarballSummary};
use flate2::write::GzEncoder;
use flate2::Compression;
use proptest::prelude::*;

const BLOCK: usize = 512;

/// A tar stream built block by block.
#[derive(Default, Clone)]
struct Tar(Vec<u8>);

impl Tar {
    /// Appends a ustar header for `name` with type `flag` and `size`, then `body` padded to a
    /// block (`body` may be shorter than `size` to build a lying header).
    fn raw(mut self, name: &[u8], flag: u8, size: u64, body: &[u8]) -> Tar {
        self.0
            .extend_from_slice(&header(name, flag, size, b"", |_| {}));
        self.body(body)
    }

    fn body(mut self, body: &[u8]) -> Tar {
        self.0.extend_from_slice(body);
        let pad = (BLOCK - body.len() % BLOCK) % BLOCK;
        self.0.resize(self.0.len() + pad, 0);
        self
    }

    /// A regular file.
    fn file(self, name: &str, body: &[u8]) -> Tar {
        self.raw(name.as_bytes(), b'0', body.len() as u64, body)
    }

    fn dir(self, name: &str) -> Tar {
        self.raw(name.as_bytes(), b'5', 0, b"")
    }

    /// A header edited by `edit` after the standard fields are set (checksum recomputed).
    fn edited(mut self, name: &[u8], flag: u8, body: &[u8], edit: impl Fn(&mut [u8])) -> Tar {
        self.0
            .extend_from_slice(&header(name, flag, body.len() as u64, b"", edit));
        self.body(body)
    }

    /// A PAX header (`x`) with the given records, for the next entry.
    fn pax(self, records: &[(&str, &str)]) -> Tar {
        let data = pax_records(records);
        self.raw(b"PaxHeader/x", b'x', data.len() as u64, &data)
    }

    /// The two end-of-archive blocks.
    fn end(mut self) -> Vec<u8> {
        self.0.resize(self.0.len() + 2 * BLOCK, 0);
        self.0
    }
}

fn pax_records(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

/// A ustar header block; `edit` runs before the checksum is computed.
fn header(name: &[u8], flag: u8, size: u64, link: &[u8], edit: impl Fn(&mut [u8])) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    assert!(name.len() <= 100, "use a GNU long name or PAX path");
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..265].copy_from_slice(b"ustar\x0000");
    edit(&mut h);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn gz(tar: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(tar).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

fn manifest(name: &str, version: &str) -> Vec<u8> {
    format!("{{\"name\":\"{name}\",\"version\":\"{version}\"}}").into_bytes()
}

/// A valid npm-shaped archive: `package/package.json` and two more files.
fn valid_tar() -> Tar {
    Tar::default()
        .dir("package/")
        .file("package/package.json", &manifest("a", "1.0.0"))
        .file("package/index.js", b"module.exports = 1;\n")
        .file("package/lib/util.js", b"")
}

fn run(tar: &[u8]) -> Result<TarballSummary, TarballError> {
    inspect(&gz(tar), &TarballLimits::DEFAULT)
}

fn err(tar: &[u8]) -> TarballError {
    run(tar).expect_err("the tarball must be refused")
}

#[path = "common/tarball_check.rs"]
mod tarball_check;
use tarball_check::check;

#[test]
fn valid_tarball_is_summarized() {
    let summary = run(&valid_tar().end()).unwrap();
    assert_eq!(summary.file_count, 3);
    assert_eq!(
        summary.unpacked_size,
        (manifest("a", "1.0.0").len() + 20) as u64
    );
    assert_eq!(summary.package_json, manifest("a", "1.0.0"));
}

#[test]
fn tarball_built_by_the_tar_crate_is_read() {
    // GNU long names (over 100 bytes) and ordinary headers, as the tar crate writes them.
    let long = format!("package/{}/file.js", "d".repeat(120));
    let mut builder = tar::Builder::new(Vec::new());
    for (path, body) in [
        ("package/package.json", manifest("b", "2.0.0")),
        (long.as_str(), b"x".to_vec()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append_data(&mut h, path, body.as_slice()).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let summary = run(&tar).unwrap();
    assert_eq!(summary.file_count, 2);
    assert_eq!(summary.package_json, manifest("b", "2.0.0"));
}

#[test]
fn other_top_level_directory_names_are_accepted() {
    let tar = Tar::default()
        .file("node-foo/package.json", &manifest("foo", "0.1.0"))
        .file("node-foo/index.js", b"1")
        .end();
    assert_eq!(run(&tar).unwrap().package_json, manifest("foo", "0.1.0"));
}

#[test]
fn pax_path_and_matching_size_are_accepted() {
    let long = format!("package/{}.js", "p".repeat(150));
    let tar = Tar::default()
        .file("package/package.json", &manifest("a", "1.0.0"))
        .pax(&[("path", &long), ("size", "3"), ("mtime", "1700000000.5")])
        .file("package/truncated-name.js", b"abc")
        .end();
    let summary = run(&tar).unwrap();
    assert_eq!(summary.file_count, 2);
}

#[test]
fn not_gzip_is_refused() {
    assert_eq!(
        inspect(b"not a tarball", &TarballLimits::DEFAULT),
        Err(TarballError::NotGzip)
    );
    assert_eq!(
        inspect(b"", &TarballLimits::DEFAULT),
        Err(TarballError::NotGzip)
    );
    // An uncompressed tar is not gzip either.
    assert_eq!(
        inspect(&valid_tar().end(), &TarballLimits::DEFAULT),
        Err(TarballError::NotGzip)
    );
    let garbage = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        inspect(&garbage, &TarballLimits::DEFAULT),
        Err(TarballError::Gzip { .. })
    ));
}

#[test]
fn gzip_bomb_is_bounded_by_the_limit() {
    // 64 MiB of zeros inside one file compresses to about 64 KiB.
    let size = 64 << 20;
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(&header(b"package/bomb", b'0', size, b"", |_| {}))
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 256 << 10, "{} bytes", bomb.len());
    let limits = TarballLimits {
        unpacked_bytes_max: 4 << 20,
        ..TarballLimits::DEFAULT
    };
    assert_eq!(
        inspect(&bomb, &limits),
        Err(TarballError::UnpackedTooLarge { max: 4 << 20 })
    );
    // Plain gzip'd zeros read as an empty archive, then the drain after the end is bounded too.
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    for _ in 0..8 {
        e.write_all(&zeros).unwrap();
    }
    let zeros_gz = e.finish().unwrap();
    let small = TarballLimits {
        unpacked_bytes_max: 1 << 20,
        ..TarballLimits::DEFAULT
    };
    assert_eq!(
        inspect(&zeros_gz, &small),
        Err(TarballError::UnpackedTooLarge { max: 1 << 20 })
    );
}

#[test]
fn truncated_gzip_and_tar_are_refused() {
    let whole = gz(&valid_tar().end());
    for cut in [
        0,
        1,
        2,
        10,
        20,
        whole.len() / 2,
        whole.len() - 8,
        whole.len() - 1,
    ] {
        let result = inspect(&whole[..cut], &TarballLimits::DEFAULT);
        assert!(
            result.is_err(),
            "cut at {cut} of {}: {result:?}",
            whole.len()
        );
    }
    // A tar cut inside a body, cleanly gzip'd.
    let tar = valid_tar().0;
    let cut = &tar[..BLOCK + BLOCK + 10];
    assert!(
        matches!(err(cut), TarballError::Tar { .. }),
        "{:?}",
        err(cut)
    );
    // A header cut in the middle.
    assert!(matches!(err(&tar[..BLOCK + 100]), TarballError::Tar { .. }));
}

#[test]
fn unsafe_paths_are_refused() {
    for path in [
        "package/../../etc/passwd",
        "../package.json",
        "/etc/passwd",
        "package/..",
        "C:/x",
        "package\\..\\..\\x",
    ] {
        let tar = valid_tar().file(path, b"x").end();
        assert!(
            matches!(err(&tar), TarballError::UnsafePath { .. }),
            "{path}: {:?}",
            err(&tar)
        );
    }
    let tar = valid_tar().dir("../").end();
    assert!(matches!(err(&tar), TarballError::UnsafePath { .. }));
    // A PAX path is checked like a header path.
    let tar = valid_tar()
        .pax(&[("path", "package/../../x")])
        .file("package/x", b"x")
        .end();
    assert!(matches!(err(&tar), TarballError::UnsafePath { .. }));
}

#[test]
fn non_utf8_paths_are_refused() {
    let tar = valid_tar().raw(b"package/\xff\xfe.js", b'0', 1, b"x").end();
    assert!(matches!(err(&tar), TarballError::NonUtf8Path { .. }));
}

#[test]
fn package_json_must_be_present_and_unique() {
    let tar = Tar::default().file("package/index.js", b"1").end();
    assert_eq!(err(&tar), TarballError::MissingPackageJson);
    let nested = Tar::default()
        .file("package/lib/package.json", &manifest("a", "1.0.0"))
        .end();
    assert_eq!(err(&nested), TarballError::MissingPackageJson);
    let top = Tar::default()
        .file("package.json", &manifest("a", "1.0.0"))
        .end();
    assert_eq!(err(&top), TarballError::MissingPackageJson);
    for second in [
        "other/package.json",
        "package/package.json",
        "package/PACKAGE.JSON",
        "./package.json",
        "package//package.json",
        "package/./package.json",
        "package/pac\u{212a}age.json",
    ] {
        let tar = valid_tar().file(second, &manifest("evil", "6.6.6")).end();
        assert!(
            matches!(err(&tar), TarballError::DuplicatePackageJson { .. }),
            "{second}: {:?}",
            err(&tar)
        );
    }
    // A package.json that is a link is no manifest.
    let link = Tar::default()
        .0
        .into_iter()
        .chain(header(
            b"package/package.json",
            b'2',
            0,
            b"../x.json",
            |_| {},
        ))
        .collect::<Vec<u8>>();
    assert_eq!(err(&Tar(link).end()), TarballError::MissingPackageJson);
}

#[test]
fn limits_are_enforced() {
    let limits = TarballLimits {
        entry_count_max: 3,
        ..TarballLimits::DEFAULT
    };
    assert_eq!(
        inspect(&gz(&valid_tar().end()), &limits),
        Err(TarballError::TooManyEntries { max: 3 })
    );
    let limits = TarballLimits {
        package_json_bytes_max: 10,
        ..TarballLimits::DEFAULT
    };
    assert!(matches!(
        inspect(&gz(&valid_tar().end()), &limits),
        Err(TarballError::PackageJsonTooLarge { max: 10, .. })
    ));
    let limits = TarballLimits {
        extension_bytes_max: 16,
        ..TarballLimits::DEFAULT
    };
    let tar = valid_tar()
        .pax(&[("path", "package/a-longer-path.js")])
        .file("package/a.js", b"1")
        .end();
    assert!(matches!(
        inspect(&gz(&tar), &limits),
        Err(TarballError::ExtensionTooLarge { max: 16, .. })
    ));
}

/// Archives that node-tar (npm) and this reader would read differently are refused.
#[test]
fn ambiguous_archives_are_refused() {
    let evil = manifest("evil", "6.6.6");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "PAX size differs from the header size",
            valid_tar()
                .pax(&[("size", "0")])
                .file("package/a.js", b"abc")
                .end(),
            "PAX size and header size differ",
        ),
        (
            "global PAX size",
            valid_tar()
                .raw(b"pax_global_header", b'g', 12, b"12 size=100\n")
                .file("package/a.js", b"abc")
                .end(),
            "global PAX header sets size",
        ),
        (
            "directory with a body",
            valid_tar()
                .raw(
                    b"package/d/",
                    b'5',
                    BLOCK as u64,
                    &header(b"package/package.json", b'0', 0, b"", |_| {}),
                )
                .end(),
            "directory entry has a body",
        ),
        (
            "file path ending in /",
            valid_tar().file("package/d/", &evil).end(),
            "file path ends with '/'",
        ),
        (
            "file with a link name",
            valid_tar()
                .edited(b"package/a.js", b'0', b"abc", |h| {
                    h[157..160].copy_from_slice(b"zzz")
                })
                .end(),
            "only links have a link name",
        ),
        (
            "size field with a non-octal digit",
            valid_tar()
                .edited(b"package/a.js", b'0', b"abc", |h| {
                    h[124..136].copy_from_slice(b"0000000003 9");
                })
                .end(),
            "not a number",
        ),
        (
            "size field with a sign",
            valid_tar()
                .edited(b"package/a.js", b'0', b"abc", |h| {
                    h[124..136].copy_from_slice(b"+0000000003\0");
                })
                .end(),
            "not plain octal",
        ),
        (
            "bytes after the NUL of a name",
            valid_tar()
                .edited(b"package/a.js", b'0', b"abc", |h| h[50] = b'\n')
                .end(),
            "bytes after its NUL",
        ),
        (
            "PAX path and GNU long name",
            valid_tar()
                .raw(b"././@LongLink", b'L', 13, b"package/b.js\0")
                .pax(&[("path", "package/c.js")])
                .file("package/a.js", b"abc")
                .end(),
            "both a PAX path and a GNU long name",
        ),
        (
            "PAX path of digits only",
            valid_tar()
                .pax(&[("path", "123")])
                .file("package/a.js", b"abc")
                .end(),
            "digits only",
        ),
        (
            "PAX path hiding a header path package.json",
            Tar::default()
                .file("package/index.js", b"1")
                .pax(&[("path", "package/innocent.json")])
                .file("package/package.json", &evil)
                .end(),
            "disagree on package.json",
        ),
        (
            "extension header after a PAX size",
            valid_tar()
                .pax(&[("size", "3")])
                .raw(b"././@LongLink", b'L', 13, b"package/b.js\0")
                .file("package/a.js", b"abc")
                .end(),
            "follows a PAX size",
        ),
        (
            "header without a name",
            valid_tar()
                .raw(b"", b'x', 0, b"")
                .file("package/a.js", b"abc")
                .end(),
            "has no name",
        ),
        (
            "unsupported entry type",
            valid_tar().raw(b"package/fifo", b'6', 0, b"").end(),
            "kind: '6'",
        ),
        (
            "sparse file",
            valid_tar().raw(b"package/sparse", b'S', 0, b"").end(),
            "kind: 'S'",
        ),
        (
            "Solaris extended header",
            valid_tar().raw(b"package/x", b'X', 0, b"").end(),
            "kind: 'X'",
        ),
        (
            "extension header at the end",
            valid_tar().pax(&[("path", "package/z.js")]).end(),
            "describe no entry",
        ),
    ];
    for (what, tar, expected) in cases {
        let result = format!("{:?}", run(&tar));
        assert!(result.contains(expected), "{what}: {result}");
    }
}

#[test]
fn entries_after_a_single_end_block_are_refused() {
    // node-tar reads on after one zero block: a second package.json there would be installed.
    let mut tar = valid_tar().0;
    tar.extend_from_slice(&[0u8; BLOCK]);
    let tar = Tar(tar)
        .file("package/package.json", &manifest("evil", "6.6.6"))
        .end();
    assert_eq!(err(&tar), TarballError::DataAfterEnd);
}

#[test]
fn gzip_members_and_padding_are_read_as_npm_reads_them() {
    let tar = valid_tar().end();
    let (head, tail) = tar.split_at(3 * BLOCK);
    let mut two = gz(head);
    two.extend_from_slice(&gz(tail));
    assert_eq!(
        inspect(&two, &TarballLimits::DEFAULT).unwrap(),
        run(&tar).unwrap()
    );
    // A hidden second member after a complete archive is still read, and refused.
    let mut hidden = gz(&valid_tar().0);
    hidden.extend_from_slice(&gz(&Tar::default()
        .file("package/package.json", &manifest("evil", "6.6.6"))
        .end()));
    assert!(matches!(
        inspect(&hidden, &TarballLimits::DEFAULT),
        Err(TarballError::DuplicatePackageJson { .. })
    ));
    // Empty members add no bytes for the unpacked limit to count; their number is bounded.
    let mut many = Vec::new();
    for _ in 0..=engine::tarball::GZIP_MEMBER_COUNT_MAX {
        many.extend_from_slice(&gz(b""));
    }
    many.extend_from_slice(&gz(&tar));
    assert_eq!(
        inspect(&many, &TarballLimits::DEFAULT),
        Err(TarballError::TooManyGzipMembers {
            max: engine::tarball::GZIP_MEMBER_COUNT_MAX
        })
    );
    let mut padded = gz(&tar);
    padded.extend_from_slice(&[0u8; 100]);
    assert!(inspect(&padded, &TarballLimits::DEFAULT).is_ok());
    let mut junk = gz(&tar);
    junk.extend_from_slice(b"junk");
    assert!(matches!(
        inspect(&junk, &TarballLimits::DEFAULT),
        Err(TarballError::Gzip { .. })
    ));
}

#[test]
fn error_messages_name_the_problem() {
    let tar = valid_tar().file("package/../x", b"x").end();
    assert_eq!(
        err(&tar).to_string(),
        "tar entry path \"package/../x\" contains '..'"
    );
    assert_eq!(
        TarballError::MissingPackageJson.to_string(),
        "the tarball has no package.json in its top-level directory"
    );
}

/// Every real tarball of the shared corpus passes, and its package.json names its package.
#[test]
fn corpus_tarballs_are_accepted() {
    let dir = std::env::var_os("AGENTREGISTRY_CORPUS").map_or_else(
        || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus")),
        std::path::PathBuf::from,
    );
    let Ok(index) = std::fs::read_to_string(dir.join("manifest.tsv")) else {
        eprintln!(
            "note: SKIPPED corpus_tarballs_are_accepted: no corpus at {}",
            dir.display()
        );
        return;
    };
    let mut count = 0;
    for line in index.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (name, version, path) = (cols[0], cols[1], cols[2]);
        let mut bytes = Vec::new();
        std::fs::File::open(dir.join(path))
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .unwrap();
        let summary = inspect(&bytes, &TarballLimits::DEFAULT)
            .unwrap_or_else(|e| panic!("{name}@{version}: {e}"));
        let json: serde_json::Value = serde_json::from_slice(&summary.package_json).unwrap();
        assert_eq!(json["name"], name, "{name}@{version}");
        assert_eq!(json["version"], version, "{name}@{version}");
        assert!(summary.file_count > 0);
        count += 1;
    }
    assert!(count > 400, "only {count} corpus tarballs");
}

proptest! {
    /// Arbitrary bytes, with and without the gzip magic in front.
    #[test]
    fn inspect_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        magic in any::<bool>(),
    ) {
        let mut data = if magic { vec![0x1f, 0x8b] } else { Vec::new() };
        data.extend_from_slice(&bytes);
        check(&data);
    }

    /// A valid tarball damaged before compression (header fields, bodies) and after it.
    #[test]
    fn damaged_tarballs_never_panic(
        tar_flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        gz_flip in proptest::option::of((any::<prop::sample::Index>(), 0u8..8)),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut tar = valid_tar()
            .pax(&[("path", "package/long.js")])
            .file("package/short.js", b"abc")
            .end();
        for (at, byte) in &tar_flips {
            let at = at.index(tar.len());
            tar[at] = *byte;
        }
        let mut data = gz(&tar);
        if let Some((at, bit)) = gz_flip {
            let at = at.index(data.len());
            data[at] ^= 1 << bit;
        }
        if let Some(cut) = cut {
            data.truncate(cut.index(data.len() + 1));
        }
        check(&data);
    }
}
