#!/usr/bin/env python3
# First read of big (file) tarballs on a one-core server: how long do other requests stall?
#   python3 perf/scripts/first_read_stall.py path/to/agentregistry
# Publishes 5 tarballs of ~10 MB (incompressible) and a small package, restarts the server
# (empty caches, files still in the page cache), then fetches each big tarball once while
# another connection polls GET /small; prints the worst /small latency during each fetch.
import io, json, os, sys, tarfile, base64, hashlib, subprocess, time, threading, http.client, socket, tempfile
binary = sys.argv[1]
home = tempfile.mkdtemp(prefix="stall-")
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
srv = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--home", home + "/h", "--cores", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def conn(): return http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for _ in range(100):
    try:
        c = conn(); c.request("GET", "/-/ping"); c.getresponse().read(); break
    except Exception: time.sleep(0.05)
c = conn(); c.request("PUT", "/-/user/org.couchdb.user:ada", json.dumps({"name": "ada", "password": "correct horse battery staple"}), {"Content-Type": "application/json"})
token = json.loads(c.getresponse().read())["token"]
def tgz(name, version, size):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as t:
        pj = json.dumps({"name": name, "version": version}).encode()
        for path, data in (("package/package.json", pj), ("package/blob.bin", os.urandom(size))):
            info = tarfile.TarInfo(path); info.size = len(data); t.addfile(info, io.BytesIO(data))
    return raw.getvalue()
def publish(name, version, data):
    body = {"_id": name, "name": name, "dist-tags": {"latest": version},
            "versions": {version: {"name": name, "version": version, "dist": {"tarball": f"http://x/{name}/-/{name}-{version}.tgz",
              "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(), "shasum": hashlib.sha1(data).hexdigest()}}},
            "_attachments": {f"{name}-{version}.tgz": {"content_type": "application/octet-stream", "data": base64.b64encode(data).decode(), "length": len(data)}}}
    c = conn(); c.request("PUT", "/" + name, json.dumps(body), {"Content-Type": "application/json", "Authorization": "Bearer " + token})
    r = c.getresponse(); r.read(); assert r.status == 201, r.status
publish("small", "1.0.0", tgz("small", "1.0.0", 100))
bigs = []
for i in range(5):
    publish(f"big{i}", "1.0.0", tgz(f"big{i}", "1.0.0", 10_000_000)); bigs.append(f"/big{i}/-/big{i}-1.0.0.tgz")
# restart: empty caches, files in page cache
srv.terminate(); srv.wait()
srv = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--home", home + "/h", "--cores", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        c = conn(); c.request("GET", "/-/ping"); c.getresponse().read(); break
    except Exception: time.sleep(0.05)
worst = []
for path in bigs:
    stop = threading.Event(); lat = []
    def poll():
        c = conn()
        while not stop.is_set():
            t = time.perf_counter(); c.request("GET", "/small"); c.getresponse().read(); lat.append(time.perf_counter() - t)
    th = threading.Thread(target=poll); th.start(); time.sleep(0.2)
    c = conn(); t = time.perf_counter(); c.request("GET", path); r = c.getresponse(); body = r.read(); big_ms = (time.perf_counter() - t) * 1e3
    time.sleep(0.2); stop.set(); th.join()
    worst.append(max(lat) * 1e3)
    print(f"{path}: {r.status} {len(body)} B in {big_ms:.1f} ms; /small max {max(lat)*1e3:.1f} ms, median {sorted(lat)[len(lat)//2]*1e3:.2f} ms over {len(lat)}")
srv.terminate(); srv.wait()
subprocess.run(["rm", "-rf", home])
print("median of worst /small latency:", sorted(worst)[len(worst)//2])
