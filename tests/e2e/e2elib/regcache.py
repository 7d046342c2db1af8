"""Running the regcache binary under test."""
import hashlib
import http.client
import ipaddress
import os
import re

import pytest

from .procs import ManagedProcess
from .upstream import REGCACHE_PASSWORD, REGCACHE_USER
from .util import free_port, http_request, ssl_context, wait_until

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


_SAMPLE = re.compile(r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def regcache_bin():
    b = os.environ.get("REGCACHE_BIN") or os.path.join(REPO_ROOT, "target", "release", "regcache")
    if not os.path.isabs(b):
        b = os.path.join(REPO_ROOT, b)
    if not os.access(b, os.X_OK):
        pytest.fail(f"regcache binary not found at {b}: build it with `cargo build --release` "
                    f"(or point REGCACHE_BIN at it)", pytrace=False)
    return b


class Regcache:
    """One regcache server with its own data dir and config.

    Defaults (what most tests use): plain HTTP on a free port, one upstream `docker.io` = the
    suite's registry.  Keyword options for the other features:
      upstreams  [(name, Upstream), ...]: every [[upstream]] in order (the first serves plain
                 /v2/<name>/ requests); each gets regcache's credentials and the suite's CA
      tls        (cert, key) paths: serve HTTPS ([tls])
      htpasswd   path of a bcrypt htpasswd file ([access] htpasswd)
      allow      ["CIDR", ...] ([access] allow)
      max_failures  wrong credentials per address per minute before 429 ([access] max_failures)
      admin      True: admin_listen on another free port (self.admin_port)
      storage    the text of a `[storage]` table (e.g. SeaweedFS.storage_toml)
      tag_ttl    every upstream's tag_ttl ("10m")
      port       the port to listen on (chosen before, e.g. to list it in the others' [fleet])
      extra      more TOML at the end of the file (e.g. a `[fleet]` table)
    """

    def __init__(self, name, workdir, upstream, pki, *, upstreams=None, tls=None, htpasswd=None,
                 allow=None, max_failures=None, admin=False,
                 storage=None, tag_ttl=None, port=None, extra=None):
        self.name = name
        self.pki = pki
        self.dir = os.path.join(workdir, name)
        self.data_dir = os.path.join(self.dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.port = port or free_port()
        self.admin_port = free_port() if admin else None
        self.tls = tls
        self.allow = list(allow or [])
        self.config = os.path.join(self.dir, "regcache.toml")
        self.log = os.path.join(self.dir, "regcache.log")
        text = f"""listen = "127.0.0.1:{self.port}"
data_dir = "{self.data_dir}"
"""
        if self.admin_port:
            text += f'admin_listen = "127.0.0.1:{self.admin_port}"\n'
        if tls:
            text += f'\n[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n'
        if htpasswd or allow:
            text += "\n[access]\n"
            if htpasswd:
                text += f'htpasswd = "{htpasswd}"\n'
            if allow:
                text += "allow = [" + ", ".join(f'"{a}"' for a in allow) + "]\n"
            if max_failures:
                text += f"max_failures = {max_failures}\n"
        for up_name, up in (upstreams or [("docker.io", upstream)]):
            text += f"""
[[upstream]]
name = "{up_name}"
url = "{up.registry_url}"
username = "{REGCACHE_USER}"
password = "{REGCACHE_PASSWORD}"
ca_file = "{pki.ca_cert}"
"""
            if tag_ttl:
                text += f'tag_ttl = "{tag_ttl}"\n'
        if storage:
            text += storage
        if extra:
            text += "\n" + extra
        with open(self.config, "w") as f:
            f.write(text)
        self.proc = ManagedProcess(name, [regcache_bin(), "serve", "--config", self.config], self.log)
        self.fetched = set()     # model: blobs this instance has already pulled from upstream

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _probe(self):
        """A request that needs no credentials from an address the allow list admits."""
        if not (self.tls or self.allow or self.admin_port):
            return http_request("127.0.0.1", self.port, "GET", "/v2/", timeout=5)[0] == 200
        src = None
        if self.allow and not any(ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(a, strict=False)
                                  for a in self.allow):
            src = str(next(ipaddress.ip_network(a, strict=False) for a in self.allow
                           if ipaddress.ip_network(a, strict=False).version == 4)[0])
        if self.tls:
            ctx = ssl_context(self.pki.ca_cert)
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=5,
                                               source_address=(src, 0) if src else None)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5,
                                              source_address=(src, 0) if src else None)
        try:
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            r.read()
            main_ok = r.status == 200
        finally:
            conn.close()
        if self.admin_port:
            return main_ok and http_request("127.0.0.1", self.admin_port, "GET", "/healthz", timeout=5)[0] == 200
        return main_ok

    def start(self):
        self.proc.start()

        def ready():
            self.proc.check_alive()
            return self._probe()
        wait_until(ready, 60, f"{self.name} to answer on 127.0.0.1:{self.port}")
        return self

    def stop(self):
        self.proc.stop()

    def kill9(self):
        self.proc.kill9()

    def metrics(self):
        """/metrics as {(name, ((label, value), ...)): value} (labels sorted)."""
        port = self.admin_port or self.port
        assert not self.tls or self.admin_port, "metrics() reads plain HTTP"
        status, _, body = http_request("127.0.0.1", port, "GET", "/metrics", timeout=10)
        assert status == 200, f"{self.name} /metrics: {status}"
        out = {}
        for line in body.decode().splitlines():
            m = _SAMPLE.fullmatch(line)
            if m:
                labels = tuple(sorted(_LABEL.findall(m["labels"] or "")))
                out[(m["name"], labels)] = float(m["value"])
        return out

    def metric(self, name, samples=None, **labels):
        """The sum of the samples of `name` whose labels include `labels` (0 if none), from
        `samples` (a metrics() snapshot) or a new read of /metrics."""
        want = {(k, str(v)) for k, v in labels.items()}
        samples = self.metrics() if samples is None else samples
        return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))

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
