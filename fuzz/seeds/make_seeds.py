#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/ (run from anywhere).

Seeds are small valid inputs, so the fuzzer starts past the first checks: npm's request
heads, chunked bodies, publish bodies for the package `a` (the name publish_body fixes),
routes, names, a config slot (with its crc32c), served values (an index and a gzip document,
layouts in engine/src/served.rs), and tarballs (the three smallest of the shared corpus, when it is
beside the repository, plus hand-made ones: GNU and PAX long names, an old top-level
directory name, edge cases). Output is deterministic; rerun after a format change.
"""
import base64, gzip, hashlib, io, json, os, struct, tarfile, zlib

ROOT = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


NPM_GET = (
    "GET /@babel%2fcore HTTP/1.1\r\n"
    "accept: application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*\r\n"
    "npm-command: install\r\n"
    "user-agent: npm/11.6.2 node/v24.11.1 linux x64 workspaces/false\r\n"
    "accept-encoding: gzip,deflate\r\n"
    'if-none-match: "0123456789abcdef0123456789abcdef"\r\n'
    "authorization: Bearer npm_abc\r\n"
    "Host: 127.0.0.1:4873\r\n"
    "Connection: keep-alive\r\n\r\n"
)
put("http_head", "npm_get", NPM_GET)
put("http_head", "publish",
    "PUT /a HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 1234\r\n"
    "expect: 100-continue\r\nauthorization: Basic YTpi\r\nHost: h\r\n\r\n")
put("http_head", "chunked",
    "PUT /a HTTP/1.1\r\ntransfer-encoding: chunked\r\nHost: h\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
put("http_head", "http10_head", "HEAD /a/-/a-1.0.0.tgz HTTP/1.0\r\n\r\n")

put("chunked_body", "two_chunks", "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
put("chunked_body", "trailers", "3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n")
put("chunked_body", "upper_hex", "A\r\n0123456789\r\n0\r\n\r\n")


def tgz(files):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mtime = 499162500
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def publish(versions, tags):
    body = {"_id": "a", "name": "a", "description": "seed", "dist-tags": tags,
            "versions": {}, "access": None, "_attachments": {}}
    for version in versions:
        manifest = {"name": "a", "version": version, "main": "index.js",
                    "dependencies": {"b": "^1.0.0"}, "license": "MIT"}
        data = tgz({"package/package.json": json.dumps(manifest).encode(),
                    "package/index.js": b"module.exports = 1;\n"})
        manifest["_id"] = f"a@{version}"
        manifest["dist"] = {
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
            "shasum": hashlib.sha1(data).hexdigest(),
            "tarball": f"http://127.0.0.1:4873/a/-/a-{version}.tgz",
        }
        body["versions"][version] = manifest
        body["_attachments"][f"a-{version}.tgz"] = {
            "content_type": "application/octet-stream",
            "data": base64.b64encode(data).decode(),
            "length": len(data),
        }
    return json.dumps(body)


put("publish_body", "one_version", publish(["1.0.0"], {"latest": "1.0.0"}))
put("publish_body", "two_versions", publish(["1.0.0", "2.0.0-rc.1"], {"next": "2.0.0-rc.1"}))

for i, target in enumerate([
    "/a", "/@babel%2fcore", "/@babel/core", "/@babel/core/-/core-7.29.13.tgz",
    "/a/-/a-1.0.0.tgz", "/a/1.0.0", "/a/latest", "/-/ping", "/-/whoami",
    "/-/user/org.couchdb.user:bob", "/-/user/token/abc", "/-/v1/login",
    "/-/package/a/dist-tags", "/-/package/@s%2fa/dist-tags/next", "/a?write=true",
]):
    put("route", f"r{i:02}", target)

for i, s in enumerate(["express", "@babel/core", "lodash.merge", "1.0.0", "1.0.0-rc.1+b.5",
                       "latest", "next-2", "~1.x", "v1.2.3"]):
    put("names", f"n{i:02}", s)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def slot(version, registry_hash, flags, mode, rows, cols, generation):
    head = b"AREG" + struct.pack("<BIIBBBQ", version, registry_hash, flags, mode, rows, cols,
                                 generation)
    return head + struct.pack("<I", crc32c(head)) + bytes(32 - len(head) - 4)


put("config_record", "current", slot(1, 0x12345678, 0b10, 0, 24, 80, 1))
put("config_record", "legacy", slot(0, 0xDEADBEEF, 0b11011, 2, 50, 132, 7))
# 20+ bytes: the target also builds a record from the first 20 bytes.
put("config_record", "fields", bytes([1, 1, 24, 80]) + struct.pack("<IIQ", 7, 2, 9))


SERVED_FORMAT = 6  # engine::served::FORMAT


def served_index():
    out = bytearray([SERVED_FORMAT]) + struct.pack("<Q", 3)
    base = b"http://127.0.0.1:4873"
    out += struct.pack("<I", len(base)) + base
    tarballs = [(b"a-1.0.0.tgz", bytes(range(32)), 1234), (b"a-2.0.0.tgz", bytes(32), 5)]
    out += struct.pack("<I", len(tarballs))
    for file, blob, size in tarballs:
        out += struct.pack("<H", len(file)) + file + blob + struct.pack("<Q", size)
    return bytes(out)


def served_doc(body, etag, cut=(0, 0, 0)):
    # The cut (engine::served::Cut): body offset, gzip offset, crc32 of the body before it.
    return (bytes([SERVED_FORMAT]) + struct.pack("<Q", 3) + bytes([len(etag)]) + etag
            + struct.pack("<III", *cut) + body)


FULL = json.dumps({"name": "a", "versions": {"1.0.0": {"name": "a"}}}).encode() * 40
put("served_record", "index_two_tarballs", served_index())
def gzip_with_cut(body, cut):
    # A gzip member with a sync flush after body[:cut]; returns it and the offset after it.
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    head = z.compress(body[:cut]) + z.flush(zlib.Z_SYNC_FLUSH)
    return head + z.compress(body[cut:]) + z.flush(), len(head)


# Only the gzip form of a document is stored (served format 6).
FULL_GZ, FULL_GZ_CUT = gzip_with_cut(FULL, 12)
put("served_record", "doc_full_gz",
    served_doc(FULL_GZ, b'"0123456789abcdef0123456789abcdef-gz"',
               (12, FULL_GZ_CUT, zlib.crc32(FULL[:12]))))


def tar_bytes(files, fmt=tarfile.USTAR_FORMAT):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for path, content in files:
            info = tarfile.TarInfo(path)
            info.mtime = 499162500
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


PKG_JSON = json.dumps({"name": "a", "version": "1.0.0", "main": "index.js"}).encode()
LONG = "package/" + "long-directory-name/" * 6 + "file.js"
put("tarball", "npm_shaped", gzip.compress(tar_bytes(
    [("package", None), ("package/package.json", PKG_JSON),
     ("package/index.js", b"module.exports = 1;\n")]), mtime=0))
put("tarball", "gnu_long_name", gzip.compress(tar_bytes(
    [("package/package.json", PKG_JSON), (LONG, b"x")], tarfile.GNU_FORMAT), mtime=0))
put("tarball", "pax_long_name", gzip.compress(tar_bytes(
    [("package/package.json", PKG_JSON), (LONG, b"x"), ("package/caf\u00e9.js", b"y")],
    tarfile.PAX_FORMAT), mtime=0))
put("tarball", "old_top_dir", gzip.compress(tar_bytes(
    [("node-a/package.json", PKG_JSON), ("node-a/lib/a.js", b"1")]), mtime=0))
put("tarball", "dot_dot_entry", gzip.compress(tar_bytes(
    [("package/package.json", PKG_JSON), ("package/../../evil.js", b"x")]), mtime=0))
put("tarball", "two_members", gzip.compress(tar_bytes([("package/package.json", PKG_JSON)])
    [:1024], mtime=0) + gzip.compress(tar_bytes([("package/b.js", b"b")]), mtime=0))
put("tarball", "empty_archive", gzip.compress(bytes(1024), mtime=0))

CORPUS = os.path.join(ROOT, "..", "..", "..", "shared", "corpus")
try:
    with open(os.path.join(CORPUS, "manifest.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    for name, version, path, size, _ in sorted(rows, key=lambda r: (int(r[3]), r[0]))[:3]:
        with open(os.path.join(CORPUS, path), "rb") as f:
            put("tarball", "corpus_" + name.replace("/", "_") + "-" + version, f.read())
except FileNotFoundError:
    print("note: no shared corpus beside the repository; corpus tarball seeds not written")
