"""Running the regcache binary under test."""
import hashlib
import os
import re

import pytest

from .procs import ManagedProcess
from .upstream import REGCACHE_PASSWORD, REGCACHE_USER
from .util import free_port, http_request, wait_until

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def regcache_bin():
    b = os.environ.get("REGCACHE_BIN") or os.path.join(REPO_ROOT, "target", "release", "regcache")
    if not os.path.isabs(b):
        b = os.path.join(REPO_ROOT, b)
    if not os.access(b, os.X_OK):
        pytest.fail(f"regcache binary not found at {b}: build it with `cargo build --release` "
                    f"(or point REGCACHE_BIN at it)", pytrace=False)
    return b


class Regcache:
    def __init__(self, name, workdir, upstream, pki):
        self.name = name
        self.dir = os.path.join(workdir, name)
        self.data_dir = os.path.join(self.dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.port = free_port()
        self.config = os.path.join(self.dir, "regcache.toml")
        self.log = os.path.join(self.dir, "regcache.log")
        with open(self.config, "w") as f:
            f.write(f"""listen = "127.0.0.1:{self.port}"
data_dir = "{self.data_dir}"

[[upstream]]
name = "docker.io"
url = "{upstream.registry_url}"
username = "{REGCACHE_USER}"
password = "{REGCACHE_PASSWORD}"
ca_file = "{pki.ca_cert}"
""")
        self.proc = ManagedProcess(name, [regcache_bin(), "serve", "--config", self.config], self.log)
        self.fetched = set()     # model: blobs this instance has already pulled from upstream

    def start(self):
        self.proc.start()

        def ready():
            self.proc.check_alive()
            return http_request("127.0.0.1", self.port, "GET", "/v2/", timeout=5)[0] == 200
        wait_until(ready, 60, f"{self.name} to answer GET /v2/ with 200")
        return self

    def stop(self):
        self.proc.stop()

    def kill9(self):
        self.proc.kill9()

    def blob_files(self):
        """{digest: path} of every file under data_dir/blobs/sha256/."""
        out = {}
        root = os.path.join(self.data_dir, "blobs", "sha256")
        for dirpath, _dirs, files in os.walk(root):
            for fn in files:
                out[os.path.relpath(os.path.join(dirpath, fn), root)] = os.path.join(dirpath, fn)
        return out

    def verify_blob_store(self):
        """Every stored blob hashes to its name and sits at <2 hex>/<64 hex>. Returns digests."""
        bad, digests = [], set()
        for rel, path in self.blob_files().items():
            m = re.fullmatch(r"([0-9a-f]{2})/([0-9a-f]{64})", rel)
            if not m or not m[2].startswith(m[1]):
                bad.append(f"unexpected file blobs/sha256/{rel}")
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(4 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != m[2]:
                bad.append(f"blobs/sha256/{rel}: content hashes to {h.hexdigest()} "
                           f"({os.path.getsize(path)} bytes)")
            digests.add("sha256:" + m[2])
        return digests, bad
