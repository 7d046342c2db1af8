"""Deterministic test images and pushing them through the registry API.

Everything here is a pure function of the code: fixed tar headers (mtime, uid,
names), gzip with mtime=0, and the big layer's payload is a ChaCha20 keystream
with a fixed key, so the digests are the same in every run on a machine.
Blobs are written once per run to a cache directory and pushed from there.
"""
import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from .util import https_request, sha256_bytes

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_INTOTO = "application/vnd.in-toto+json"
LIST_TYPES = (MT_DOCKER_LIST, MT_OCI_INDEX)

MTIME = 1704067200          # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"
BIG_LAYER_BYTES = 128 * 1024 * 1024
FLEET_LAYER_BYTES = 256 * 1024 * 1024


@dataclass
class Blob:
    digest: str
    size: int
    path: str


@dataclass
class PlatformImage:
    platform: str                 # "linux/amd64"
    manifest_digest: str
    media_type: str
    config_digest: str
    layer_digests: list

    @property
    def blobs(self):
        return {self.config_digest, *self.layer_digests}


@dataclass
class TestImage:
    key: str
    repo: str                     # "library/alpine"
    tag: str
    digest: str                   # top-level manifest / index digest
    media_type: str
    manifests: dict = field(default_factory=dict)   # digest -> (media_type, bytes)
    platforms: dict = field(default_factory=dict)   # "linux/amd64" -> PlatformImage
    attestations: list = field(default_factory=list)  # PlatformImage with platform unknown/unknown
    blobs: dict = field(default_factory=dict)       # digest -> Blob (every blob of every manifest)
    registry: str = "docker.io"   # the registry host clients name it by (ghcr.io: the second registry)

    # --- names as the clients spell them (plain Docker Hub names) ---
    @property
    def short(self):
        if self.registry != "docker.io":
            return f"{self.registry}/{self.repo}"
        return self.repo[len("library/"):] if self.repo.startswith("library/") else self.repo

    def docker_ref(self, by_digest=False):
        return f"{self.short}@{self.digest}" if by_digest else f"{self.short}:{self.tag}"

    def full_ref(self, by_digest=False):
        return (f"{self.registry}/{self.repo}@{self.digest}" if by_digest
                else f"{self.registry}/{self.repo}:{self.tag}")

    @property
    def is_list(self):
        return self.media_type in LIST_TYPES

    @property
    def is_oci(self):
        return self.media_type in (MT_OCI_MANIFEST, MT_OCI_INDEX)

    @property
    def amd64(self):
        return self.platforms["linux/amd64"]

    def blob_sizes(self):
        return sum(b.size for b in self.blobs.values())


class _Store:
    def __init__(self, d):
        self.dir = d
        os.makedirs(d, exist_ok=True)

    def put(self, data):
        dg = sha256_bytes(data)
        path = os.path.join(self.dir, dg.split(":")[1])
        if not os.path.exists(path):
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return Blob(dg, len(data), path)


def _tar(entries):
    """entries: (name, data-bytes | None for a directory | ('symlink', target), mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode = MTIME, 0, 0, "root", "root", mode
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif isinstance(data, tuple):
                ti.type, ti.linkname = tarfile.SYMTYPE, data[1]
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _layer(store, entries, level=6):
    raw = _tar(entries)
    gz = gzip.compress(raw, compresslevel=level, mtime=0)
    return store.put(gz), sha256_bytes(raw)


def _rootfs_entries(label, arch):
    sh = f"#!/bin/sh\n# regcache e2e stand-in shell ({label}, {arch})\necho regcache-e2e\n".encode()
    return [
        ("bin", None, 0o755),
        ("bin/busybox", sh, 0o755),
        ("bin/sh", ("symlink", "busybox"), 0o777),
        ("bin/ls", ("symlink", "busybox"), 0o777),
        ("etc", None, 0o755),
        ("etc/os-release", f'NAME="regcache e2e"\nID=e2e\nVERSION_ID=3.0\nIMAGE="{label}"\n'.encode(), 0o644),
        ("etc/hostname", b"e2e\n", 0o644),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/regcache-e2e", None, 0o755),
        (f"etc/regcache-e2e/{label}-{arch}", f"{label} {arch}\n".encode() * 50, 0o644),
        ("root", None, 0o700),
        ("tmp", None, 0o1777),
    ]


def _config(store, arch, diff_ids, label, oci, variant=None):
    cfg = {"architecture": arch, "os": "linux"}
    if variant:
        cfg["variant"] = variant
    cfg.update({
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh"], "Labels": {"org.regcache.e2e": label}},
        "created": CREATED,
        "history": [{"created": CREATED, "created_by": f"regcache-e2e layer {i}"} for i in range(len(diff_ids))],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    return store.put(json.dumps(cfg, indent=2).encode())


def _manifest(cfg, layers, oci):
    m = {"schemaVersion": 2,
         "mediaType": MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST,
         "config": {"mediaType": MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG,
                    "size": cfg.size, "digest": cfg.digest},
         "layers": [{"mediaType": MT_OCI_LAYER if oci else MT_DOCKER_LAYER,
                     "size": b.size, "digest": b.digest} for b in layers]}
    return json.dumps(m, indent=3).encode()


def _platform_image(img, store, arch, label, oci, layer_specs, variant=None):
    """layer_specs: list of entry-lists (or prebuilt (Blob, diff_id) tuples)."""
    layers, diff_ids = [], []
    for spec in layer_specs:
        blob, diff = spec if isinstance(spec, tuple) else _layer(store, spec)
        layers.append(blob)
        diff_ids.append(diff)
    cfg = _config(store, arch, diff_ids, label, oci, variant)
    mbytes = _manifest(cfg, layers, oci)
    mt = MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST
    dg = sha256_bytes(mbytes)
    img.manifests[dg] = (mt, mbytes)
    for b in (cfg, *layers):
        img.blobs[b.digest] = b
    plat = f"linux/{arch}" + (f"/{variant}" if variant else "")
    pi = PlatformImage(plat if arch != "arm64" else "linux/arm64", dg, mt, cfg.digest, [b.digest for b in layers])
    return pi, len(mbytes)


def _single(key, repo, tag, store, label, oci, layer_specs):
    img = TestImage(key, repo, tag, "", "")
    pi, _ = _platform_image(img, store, "amd64", label, oci, layer_specs)
    img.platforms["linux/amd64"] = pi
    img.digest, img.media_type = pi.manifest_digest, pi.media_type
    return img


def _index(key, repo, tag, store, label, oci, attest):
    img = TestImage(key, repo, tag, "", "")
    entries = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        pi, size = _platform_image(img, store, arch, label, oci,
                                   [_rootfs_entries(label, arch),
                                    [("app", None, 0o755), ("app/README", f"{label} app layer {arch}\n".encode(), 0o644)]],
                                   variant)
        img.platforms[f"linux/{arch}"] = pi
        p = {"architecture": arch, "os": "linux"}
        if variant:
            p["variant"] = variant
        entries.append({"mediaType": pi.media_type, "size": size, "digest": pi.manifest_digest, "platform": p})
    if attest:
        for e in list(entries):
            stmt = json.dumps({"_type": "https://in-toto.io/Statement/v0.1",
                               "predicateType": "https://spdx.dev/Document",
                               "subject": [{"name": f"pkg:docker/{repo}@{tag}",
                                            "digest": {"sha256": e["digest"].split(":")[1]}}],
                               "predicate": {"spdxVersion": "SPDX-2.3", "name": f"sbom-{label}-{e['platform']['architecture']}"}},
                              indent=2).encode()
            lay = store.put(stmt)
            cfg = store.put(json.dumps({"architecture": "unknown", "os": "unknown", "config": {},
                                        "rootfs": {"type": "layers", "diff_ids": [lay.digest]}}).encode())
            m = json.dumps({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                            "config": {"mediaType": MT_OCI_CONFIG, "digest": cfg.digest, "size": cfg.size},
                            "layers": [{"mediaType": MT_INTOTO, "digest": lay.digest, "size": lay.size,
                                        "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}}]},
                           indent=2).encode()
            dg = sha256_bytes(m)
            img.manifests[dg] = (MT_OCI_MANIFEST, m)
            img.blobs[cfg.digest] = cfg
            img.blobs[lay.digest] = lay
            img.attestations.append(PlatformImage("unknown/unknown", dg, MT_OCI_MANIFEST, cfg.digest, [lay.digest]))
            entries.append({"mediaType": MT_OCI_MANIFEST, "digest": dg, "size": len(m),
                            "annotations": {"vnd.docker.reference.digest": e["digest"],
                                            "vnd.docker.reference.type": "attestation-manifest"},
                            "platform": {"architecture": "unknown", "os": "unknown"}})
    mt = MT_OCI_INDEX if oci else MT_DOCKER_LIST
    top = {"schemaVersion": 2, "mediaType": mt, "manifests": entries}
    tb = json.dumps(top, indent=3).encode()
    img.digest, img.media_type = sha256_bytes(tb), mt
    img.manifests[img.digest] = (mt, tb)
    return img


def _big_layer(store):
    key = hashlib.sha256(b"regcache-e2e big layer key").digest()
    nonce = b"\x00" * 16
    payload = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(b"\x00" * BIG_LAYER_BYTES)
    entries = [("data", None, 0o755), ("data/random.bin", payload, 0o644)]
    return _layer(store, entries, level=1)


def _fleet_layer(store):
    """The fleet tests' 256 MiB of ChaCha20 keystream, in a gzip stream of stored blocks (level 0:
    the bytes are incompressible anyway, and compressing them would cost seconds every run)."""
    key = hashlib.sha256(b"regcache-e2e fleet layer key").digest()
    payload = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor().update(b"\x00" * FLEET_LAYER_BYTES)
    return _layer(store, [("data", None, 0o755), ("data/random.bin", payload, 0o644)], level=0)


def build_catalog(cache_dir):
    store = _Store(os.path.join(cache_dir, "blobs"))
    imgs = {}
    imgs["alpine"] = _single("alpine", "library/alpine", "3", store, "alpine", False,
                             [_rootfs_entries("alpine", "amd64"),
                              [("etc", None, 0o755), ("etc/alpine-release", b"3.99.0\n", 0o644),
                               ("lib", None, 0o755), ("lib/apk", None, 0o755),
                               ("lib/apk/db", b"e2e apk database\n" * 200, 0o644)]])
    imgs["multiarch"] = _index("multiarch", "library/multiarch", "1", store, "multiarch", oci=False, attest=False)
    imgs["buildx"] = _index("buildx", "library/buildx", "1", store, "buildx", oci=True, attest=True)
    imgs["layers30"] = _single("layers30", "library/layers30", "1", store, "layers30", True,
                               [_rootfs_entries("layers30", "amd64")] +
                               [[("layers", None, 0o755),
                                 (f"layers/{i:02d}.txt", f"layer {i} of layers30\n".encode() * (i + 1), 0o644)]
                                for i in range(1, 30)])
    imgs["big"] = _single("big", "library/big", "1", store, "big", False,
                          [_rootfs_entries("big", "amd64"), _big_layer(store)])
    imgs["fleet"] = _single("fleet", "library/fleet", "1", store, "fleet", False,
                            [_rootfs_entries("fleet", "amd64"), _fleet_layer(store)])
    imgs["private"] = _single("private", "private/app", "1", store, "private", True,
                              [_rootfs_entries("private", "amd64"),
                               [("app", None, 0o755), ("app/secret.txt", b"only regcache may fetch this\n", 0o600)]])
    return _distinct_blobs(imgs)


def build_second_catalog(cache_dir, registry="ghcr.io"):
    """Images of the SECOND upstream registry (clients call it `registry`), plus the first
    registry's own image under the same name as one of them:

      second["alpine"]   registry/library/alpine:3   Docker v2, NOT the first registry's alpine:3
      second["app"]      registry/org/app:1.0        OCI index amd64+arm64
      second["hub-app"]  docker.io/org/app:1.0       single OCI manifest, pushed to the FIRST registry

    Same repository names on both registries with different content: a request routed to the
    wrong registry yields the wrong digest instead of an error. No blob is shared with
    build_catalog's images or between these."""
    store = _Store(os.path.join(cache_dir, "blobs"))
    imgs = {}
    imgs["alpine"] = _single("alpine", "library/alpine", "3", store, f"{registry}-alpine", False,
                             [_rootfs_entries(f"{registry}-alpine", "amd64"),
                              [("etc", None, 0o755), ("etc/registry", f"{registry}\n".encode(), 0o644)]])
    imgs["app"] = _index("app", "org/app", "1.0", store, f"{registry}-app", oci=True, attest=False)
    imgs["hub-app"] = _single("hub-app", "org/app", "1.0", store, "docker.io-app", True,
                              [_rootfs_entries("docker.io-app", "amd64")])
    imgs["alpine"].registry = imgs["app"].registry = registry
    return _distinct_blobs(imgs)


def _distinct_blobs(imgs):
    """Check every blob belongs to exactly one image, so per-image request counts are unambiguous."""
    seen = {}
    for k, img in imgs.items():
        for d in img.blobs:
            assert d not in seen, f"blob {d} shared by {seen[d]} and {k}"
            seen[d] = k
    return imgs


def big_blob(imgs):
    b = max(imgs["big"].blobs.values(), key=lambda b: b.size)
    assert b.size > 100 * 1024 * 1024
    return b


def fleet_blob(imgs):
    """The 256 MiB layer of `fleet:1` (the fleet tests' cold blob)."""
    b = max(imgs["fleet"].blobs.values(), key=lambda b: b.size)
    assert b.size > FLEET_LAYER_BYTES
    return b


# ---------------------------------------------------------------- pushing

class Pusher:
    """Pushes through the registry API: token (Basic, push scope) -> HEAD blob ->
    POST upload + monolithic PUT ?digest= -> manifest PUTs (children first)."""

    def __init__(self, host, port, ca_file, token_host, token_port, service, user, password):
        self.host, self.port, self.ca = host, port, ca_file
        self.token_host, self.token_port, self.service = token_host, token_port, service
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.tokens = {}

    def _token(self, repo):
        if repo not in self.tokens:
            st, _h, body = https_request(self.token_host, self.token_port, "GET",
                                         f"/token?service={self.service}&scope=repository:{repo}:pull,push",
                                         self.ca, headers={"Authorization": self.basic})
            assert st == 200, f"token server refused push token for {repo}: {st} {body[:200]!r}"
            self.tokens[repo] = json.loads(body)["token"]
        return {"Authorization": "Bearer " + self.tokens[repo]}

    def _req(self, method, path, repo, headers=None, body=None):
        h = dict(self._token(repo))
        h.update(headers or {})
        return https_request(self.host, self.port, method, path, self.ca, headers=h, body=body, timeout=300)

    def push_blob(self, repo, blob):
        st, _h, _b = self._req("HEAD", f"/v2/{repo}/blobs/{blob.digest}", repo)
        if st == 200:
            return False
        st, h, b = self._req("POST", f"/v2/{repo}/blobs/uploads/", repo, {"Content-Length": "0"})
        assert st == 202, f"upload start for {repo}: {st} {b[:300]!r}"
        loc = h["location"]
        if loc.startswith("https://"):
            loc = "/" + loc.split("/", 3)[3]
        loc += ("&" if "?" in loc else "?") + "digest=" + blob.digest
        with open(blob.path, "rb") as f:
            data = f.read()
        st, _h, b = self._req("PUT", loc, repo, {"Content-Type": "application/octet-stream",
                                                 "Content-Length": str(len(data))}, data)
        assert st == 201, f"blob PUT {blob.digest} to {repo}: {st} {b[:300]!r}"
        return True

    def push_manifest(self, repo, ref, media_type, data):
        st, _h, b = self._req("PUT", f"/v2/{repo}/manifests/{ref}", repo,
                              {"Content-Type": media_type, "Content-Length": str(len(data))}, data)
        assert st == 201, f"manifest PUT {repo}:{ref}: {st} {b[:500]!r}"

    def push_image(self, img):
        for blob in img.blobs.values():
            self.push_blob(img.repo, blob)
        for dg, (mt, data) in img.manifests.items():
            if dg != img.digest:
                self.push_manifest(img.repo, dg, mt, data)
        mt, data = img.manifests[img.digest]
        self.push_manifest(img.repo, img.tag, mt, data)
        # the registry must now hold exactly these bytes under the tag
        st, h, body = self._req("GET", f"/v2/{img.repo}/manifests/{img.tag}", img.repo,
                                {"Accept": ", ".join([MT_DOCKER_MANIFEST, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_OCI_INDEX])})
        assert st == 200 and sha256_bytes(body) == img.digest, \
            f"registry holds {sha256_bytes(body)} for {img.repo}:{img.tag}, pushed {img.digest}"
