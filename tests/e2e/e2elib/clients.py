"""The three real clients, each pulling with fresh state every time.

* Docker: a brand-new dockerd (own data-root, exec-root, socket, pidfile,
  daemon.json with vfs / no iptables / no bridge / registry-mirrors) per pull.
* containerd: one containerd per run with content_sharing_policy="isolated",
  and a fresh namespace per pull, so every pull fetches every blob again.
* skopeo: a fresh destination directory per pull, registries.conf naming the
  mirror for docker.io.
"""
import http.client
import itertools
import json
import os
import re
import shutil
import socket

from .images import LIST_TYPES
from .procs import ManagedProcess
from .util import require_tool, run, sha256_file, wait_until

_counter = itertools.count(1)


class Mirror:
    """Where the clients send docker.io requests: regcache (plain HTTP) or, for
    harness self-checks, the upstream registry itself (HTTPS, suite CA)."""

    def __init__(self, name, host, port, scheme, ca_file=None):
        self.name, self.host, self.port, self.scheme, self.ca_file = name, host, port, scheme, ca_file

    @property
    def url(self):
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def hostport(self):
        return f"{self.host}:{self.port}"


class PullResult:
    def __init__(self, client, ref, ok, digest=None, detail=None, cmd=None):
        self.client, self.ref, self.ok, self.digest, self.detail, self.cmd = client, ref, ok, digest, detail or {}, cmd

    def __repr__(self):
        return f"<{self.client} pull {self.ref} ok={self.ok} digest={self.digest}>\n{self.cmd!r}"


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def _unix_get(sock, path):
    c = _UnixHTTP(sock)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# ---------------------------------------------------------------------- docker

class DockerClient:
    name = "docker"

    def __init__(self, workdir, mirror, containerd):
        self.dockerd = require_tool("dockerd", "docker.io")
        require_tool("runc", "runc")
        # dockerd would otherwise use a system containerd at /run/containerd if one runs;
        # it gets the suite's own, with a namespace of its own per daemon
        self.containerd = containerd
        cli = os.path.join(os.path.dirname(os.path.realpath(self.dockerd)), "docker")
        self.docker = cli if os.path.exists(cli) else require_tool("docker", "docker.io")
        self.workdir = os.path.join(workdir, "docker")
        os.makedirs(self.workdir, exist_ok=True)
        self.mirror = mirror
        self.log = os.path.join(self.workdir, "commands.log")

    def _start_daemon(self, d):
        os.makedirs(d)
        cfg = {"storage-driver": "vfs", "iptables": False, "ip-masq": False, "bridge": "none",
               "registry-mirrors": [self.mirror.url], "max-concurrent-downloads": 3,
               "log-level": "info"}
        if self.mirror.scheme == "https":
            # harness self-check straight against the TLS registry (suite CA not in the system store)
            cfg["insecure-registries"] = [self.mirror.hostport]
        with open(os.path.join(d, "daemon.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        sock = os.path.join(d, "d.sock")
        ns = os.path.basename(d)
        p = ManagedProcess("dockerd", [self.dockerd, "--config-file", os.path.join(d, "daemon.json"),
                                       "--containerd", self.containerd.sock,
                                       "--containerd-namespace", f"moby-{ns}",
                                       "--containerd-plugins-namespace", f"plugins-{ns}",
                                       "--data-root", os.path.join(d, "root"),
                                       "--exec-root", os.path.join(d, "x"),
                                       "-H", f"unix://{sock}", "--pidfile", os.path.join(d, "dockerd.pid")],
                           os.path.join(d, "dockerd.log"))
        p.start()

        def ping():
            p.check_alive()
            return _unix_get(sock, "/_ping")[0] == 200
        wait_until(ping, 60, "dockerd to answer /_ping")
        return p, sock

    def pull(self, img, by_digest=False):
        ref = img.docker_ref(by_digest)
        d = os.path.join(self.workdir, f"d{next(_counter)}")
        daemon, sock = self._start_daemon(d)
        env = dict(os.environ, DOCKER_CONFIG=os.path.join(d, "cli"))
        env.pop("DOCKER_HOST", None)
        try:
            r = run([self.docker, "-H", f"unix://{sock}", "pull", ref], timeout=600, env=env,
                    check=False, log=self.log)
            if r.rc != 0:
                return PullResult("docker", ref, False, cmd=r,
                                  detail={"dockerd_log": daemon.log_tail(30)})
            m = re.search(r"^Digest: (sha256:[0-9a-f]{64})$", r.out, re.M)
            insp = run([self.docker, "-H", f"unix://{sock}", "image", "inspect", "--format",
                        "{{json .RepoDigests}} {{.Id}}", ref], env=env, log=self.log)
            rd, image_id = insp.out.strip().rsplit(" ", 1)
            return PullResult("docker", ref, True, m[1] if m else None, cmd=r,
                              detail={"repo_digests": json.loads(rd), "image_id": image_id})
        finally:
            daemon.stop(timeout=30)
            # keep the daemon's log (appended to one file), drop its image store
            with open(os.path.join(d, "dockerd.log"), "rb") as src, \
                    open(os.path.join(self.workdir, "dockerd-all.log"), "ab") as dst:
                dst.write(f"\n######## {d} pull {ref}\n".encode() + src.read())
            shutil.rmtree(d, ignore_errors=True)

    def check(self, res, img):
        assert res.ok, f"docker pull failed: {res!r}\n{res.detail.get('dockerd_log', '')}"
        assert res.digest == img.digest, f"docker reported Digest {res.digest}, upstream holds {img.digest}\n{res!r}"
        want = f"{img.short}@{img.digest}"
        assert want in res.detail["repo_digests"], f"RepoDigests {res.detail['repo_digests']} lack {want}"
        assert res.detail["image_id"] == img.amd64.config_digest, \
            f"image ID {res.detail['image_id']} != linux/amd64 config {img.amd64.config_digest}"

    @staticmethod
    def needed_blobs(img):
        return set(img.amd64.blobs)


# ------------------------------------------------------------------ containerd

class ContainerdDaemon:
    def __init__(self, workdir):
        self.containerd = require_tool("containerd", "containerd")
        self.ctr = require_tool("ctr", "containerd")
        self.dir = os.path.join(workdir, "ctrd")
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "c.sock")
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as f:
            f.write(f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
# a fresh namespace must not see blobs another namespace fetched: every pull is a real one
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
""")
        self.proc = ManagedProcess("containerd", [self.containerd, "--config", self.config],
                                   os.path.join(self.dir, "containerd.log"))

    def start(self):
        self.proc.start()

        def ready():
            self.proc.check_alive()
            return run([self.ctr, "-a", self.sock, "version"], timeout=10, check=False).rc == 0
        wait_until(ready, 60, "containerd to answer on its socket", interval=0.1)
        return self

    def stop(self):
        self.proc.stop()


class ContainerdClient:
    name = "containerd"

    def __init__(self, workdir, mirror, daemon, registries=("docker.io",)):
        """registries: one <hosts-dir>/<registry>/hosts.toml each, all naming `mirror` (containerd
        then sends ?ns=<registry> to it)."""
        self.daemon = daemon
        self.mirror = mirror
        self.hosts_dir = os.path.join(workdir, "ctr-hosts", mirror.name)
        for reg in registries:
            os.makedirs(os.path.join(self.hosts_dir, reg), exist_ok=True)
            server = "https://registry-1.docker.io" if reg == "docker.io" else f"https://{reg}"
            with open(os.path.join(self.hosts_dir, reg, "hosts.toml"), "w") as f:
                f.write(f'server = "{server}"\n\n'
                        f'[host."{mirror.url}"]\n  capabilities = ["pull", "resolve"]\n')
                if mirror.ca_file:
                    f.write(f'  ca = "{mirror.ca_file}"\n')
        self.log = os.path.join(daemon.dir, "commands.log")

    def _ctr(self, ns, *args, check=True, timeout=600):
        return run([self.daemon.ctr, "-a", self.daemon.sock, "-n", ns, *args], timeout=timeout,
                   check=check, log=self.log, env=dict(os.environ, CONTAINERD_SNAPSHOTTER="native"))

    def pull(self, img, by_digest=False, user=None):
        """user: "name:password" for the mirror's Basic auth (ctr --user)."""
        ref = img.full_ref(by_digest)
        ns = f"e2e{next(_counter)}"
        self.daemon.proc.check_alive()
        creds = ["--user", user] if user else []
        r = self._ctr(ns, "images", "pull", "--snapshotter", "native", "--hosts-dir", self.hosts_dir, *creds,
                      ref, check=False)
        try:
            if r.rc != 0:
                return PullResult("containerd", ref, False, cmd=r)
            ls = self._ctr(ns, "images", "ls")
            digest = None
            for line in ls.out.splitlines()[1:]:
                cols = line.split()
                if cols and cols[0] == ref:
                    digest = cols[2]
            return PullResult("containerd", ref, True, digest, cmd=r, detail={"ls": ls.out})
        finally:
            # drop what this namespace holds (synchronous GC) to keep the disk small
            self._ctr(ns, "images", "rm", "--sync", ref, check=False)

    def check(self, res, img):
        assert res.ok, f"ctr pull failed: {res!r}"
        assert res.digest == img.digest, f"ctr images ls shows {res.digest}, upstream holds {img.digest}\n{res.detail}"

    @staticmethod
    def needed_blobs(img):
        return set(img.amd64.blobs)


# ---------------------------------------------------------------------- skopeo

class SkopeoClient:
    name = "skopeo"

    def __init__(self, workdir, mirror, pki, registries=("docker.io",), path_prefix=False):
        """registries: one [[registry]] each with `mirror` as its mirror; path_prefix: the mirror
        location is "<mirror>/<registry>", so requests go to /v2/<registry>/<name>/..."""
        self.skopeo = require_tool("skopeo", "skopeo")
        self.dir = os.path.join(workdir, "skopeo", mirror.name)
        os.makedirs(self.dir, exist_ok=True)
        self.mirror, self.pki = mirror, pki
        self.conf = os.path.join(self.dir, "registries.conf")
        with open(self.conf, "w") as f:
            f.write('unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n')
            for reg in registries:
                loc = f"{mirror.hostport}/{reg}" if path_prefix else mirror.hostport
                f.write(f'\n[[registry]]\nprefix = "{reg}"\nlocation = "{reg}"\n\n'
                        f'[[registry.mirror]]\nlocation = "{loc}"\n'
                        f'insecure = {"true" if mirror.scheme == "http" else "false"}\n')
        self.policy = os.path.join(self.dir, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        self.log = os.path.join(self.dir, "commands.log")
        self.env = dict(os.environ, REGISTRIES_CONFIG_PATH=self.conf, CONTAINERS_REGISTRIES_CONF=self.conf,
                        REGISTRY_AUTH_FILE=os.path.join(self.dir, "no-auth.json"),
                        TMPDIR=self.dir)

    def base_argv(self):
        return [self.skopeo, "--registries-conf", self.conf, "--policy", self.policy,
                "--tmpdir", self.dir]

    def copy_argv(self, img, dest, by_digest=False, creds=None):
        """creds: "name:password" for the mirror (--src-creds); default --src-no-creds."""
        argv = self.base_argv() + ["copy", *(["--src-creds", creds] if creds else ["--src-no-creds"]),
                                   "--retry-times", "0"]
        if self.mirror.ca_file:
            argv += ["--src-cert-dir", self.pki.cert_dir]
        if img.is_list:
            argv.append("--all")
        # oci: keeps OCI manifests byte-for-byte; it would convert Docker schema2 to OCI
        # (new digests), so Docker-format images go to dir:, which keeps the bytes too.
        target = f"oci:{dest}:{img.tag}" if img.is_oci else f"dir:{dest}"
        return argv + [f"docker://{img.full_ref(by_digest)}", target]

    def pull(self, img, by_digest=False, creds=None):
        dest = os.path.join(self.dir, f"p{next(_counter)}")
        r = run(self.copy_argv(img, dest, by_digest, creds), timeout=600, env=self.env, check=False, log=self.log)
        try:
            if r.rc != 0:
                return PullResult("skopeo", img.full_ref(by_digest), False, cmd=r)
            return PullResult("skopeo", img.full_ref(by_digest), True, self.read_digest(img, dest), cmd=r,
                              detail=self.verify_layout(img, dest))
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    @staticmethod
    def read_digest(img, dest):
        if img.is_oci:
            with open(os.path.join(dest, "index.json")) as f:
                idx = json.load(f)
            return idx["manifests"][0]["digest"]
        return "sha256:" + sha256_file(os.path.join(dest, "manifest.json"))

    @staticmethod
    def verify_layout(img, dest):
        """Every blob skopeo wrote must hash to its name; report which blobs are there."""
        found = set()
        if img.is_oci:
            bdir = os.path.join(dest, "blobs", "sha256")
            for fn in os.listdir(bdir):
                assert sha256_file(os.path.join(bdir, fn)) == fn, f"oci layout blob {fn} corrupt"
                found.add("sha256:" + fn)
        else:
            for fn in os.listdir(dest):
                if re.fullmatch(r"[0-9a-f]{64}", fn):
                    assert sha256_file(os.path.join(dest, fn)) == fn, f"dir blob {fn} corrupt"
                    found.add("sha256:" + fn)
        return {"blobs": found}

    def check(self, res, img):
        assert res.ok, f"skopeo copy failed: {res!r}"
        assert res.digest == img.digest, f"skopeo wrote {res.digest}, upstream holds {img.digest}\n{res!r}"
        missing = {d for d in self.needed_blobs(img) if d in img.blobs} - res.detail["blobs"]
        assert not missing, f"skopeo destination lacks blobs {sorted(missing)}"

    @staticmethod
    def needed_blobs(img):
        # --all for lists: every platform and every attestation manifest
        return set(img.blobs) if img.media_type in LIST_TYPES else set(img.amd64.blobs)
