"""Session fixtures of the regcache e2e suite.  See README.md for the layout.

E2E_VIA=regcache (default): clients pull through regcache.
E2E_VIA=direct: harness self-check; clients use the upstream registry itself
as their docker.io mirror and regcache-only tests are skipped.
E2E_KEEP=1 keeps the work directory (it is also kept when a test failed).
"""
import os
import shutil
import signal
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from e2elib import procs  # noqa: E402
from e2elib.clients import ContainerdClient, ContainerdDaemon, DockerClient, Mirror, SkopeoClient  # noqa: E402
from e2elib.images import Pusher, big_blob, build_catalog, fleet_blob  # noqa: E402
from e2elib.pki import PKI  # noqa: E402
from e2elib.regcache import Regcache  # noqa: E402
from e2elib.s3 import SeaweedFS  # noqa: E402
from e2elib import upstream as up_mod  # noqa: E402
from e2elib.util import require_tool  # noqa: E402

VIA = os.environ.get("E2E_VIA", "regcache")
assert VIA in ("regcache", "direct"), "E2E_VIA must be 'regcache' or 'direct'"

# (title, callable -> text) appended to the report of every failing test
LOG_SOURCES = []


def pytest_configure(config):
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")   # pytest then runs every finalizer
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)


def pytest_collection_modifyitems(config, items):
    if VIA == "direct":
        skip = pytest.mark.skip(reason="E2E_VIA=direct: harness self-check, regcache not under test")
        for it in items:
            if "needs_regcache" in it.keywords:
                it.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for title, fn in LOG_SOURCES:
            try:
                rep.sections.append((title, fn()))
            except Exception as e:  # noqa: BLE001
                rep.sections.append((title, f"(could not read: {e!r})"))


def pytest_sessionfinish(session, exitstatus):
    procs.kill_all()


class Target:
    """What the clients pull from, plus the model of what it has cached."""

    def __init__(self, mirror, regcache=None):
        self.mirror, self.regcache = mirror, regcache

    @property
    def caches(self):
        return self.regcache is not None

    @property
    def fetched(self):
        return self.regcache.fetched if self.regcache else set()


@pytest.fixture(scope="session")
def workdir(request):
    d = tempfile.mkdtemp(prefix="rc-e2e-", dir="/tmp")
    os.chmod(d, 0o755)
    sys.stderr.write(f"\n[e2e] work directory {d} (mode: {VIA})\n")
    yield d
    procs.kill_all()
    if os.environ.get("E2E_KEEP") or request.session.testsfailed:
        sys.stderr.write(f"\n[e2e] kept work directory {d} (logs of every server are there)\n")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pki(workdir):
    require_tool("openssl", "openssl")
    return PKI(os.path.join(workdir, "pki")).create()


@pytest.fixture(scope="session")
def catalog(workdir):
    return build_catalog(os.path.join(workdir, "images"))


@pytest.fixture(scope="session")
def upstream(workdir, pki, catalog):
    up = up_mod.Upstream(workdir, pki, [big_blob(catalog).digest, fleet_blob(catalog).digest])
    LOG_SOURCES.append(("upstream logs", up.log_tails))
    try:
        up.start()
        pusher = Pusher("127.0.0.1", up.reg_port, pki.ca_cert, "127.0.0.1", up.token_port,
                        up_mod.SERVICE, up_mod.PUSH_USER, up_mod.PUSH_PASSWORD)
        for img in catalog.values():
            pusher.push_image(img)
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="session")
def direct_mirror(upstream, pki):
    return Mirror("direct", "127.0.0.1", upstream.reg_port, "https", pki.ca_cert)


def _start_regcache(name, workdir, upstream, pki, **options):
    rc = Regcache(name, workdir, upstream, pki, **options)
    LOG_SOURCES.append((f"{name} log (tail)", lambda: rc.proc.log_tail(60)))
    rc.start()
    return rc


@pytest.fixture(scope="session")
def target(workdir, upstream, pki, direct_mirror):
    if VIA == "direct":
        yield Target(direct_mirror)
        return
    rc = _start_regcache("regcache-a", workdir, upstream, pki)
    try:
        yield Target(Mirror("regcache-a", "127.0.0.1", rc.port, "http"), rc)
    finally:
        rc.stop()


@pytest.fixture(scope="session")
def start_regcache(workdir, upstream, pki):
    """Factory for extra regcache instances (own data dir; keyword options of Regcache); all
    stopped at session end."""
    made = []

    def make(name, **options):
        rc = _start_regcache(name, workdir, upstream, pki, **options)
        made.append(rc)
        return rc
    yield make
    for rc in made:
        rc.stop()


@pytest.fixture(scope="module")
def upstream_stopped(upstream):
    """The whole upstream (registry, token server, CDN) stopped for the rest of the module
    (started again after it): use it in a module's last tests."""
    upstream.stop()
    try:
        yield upstream
    finally:
        upstream.start()


def _start_seaweedfs(name, workdir, tls=None):
    weed = SeaweedFS(workdir, name, tls=tls)
    LOG_SOURCES.append((f"{name} log (tail)", lambda: weed.proc.log_tail(40)))
    try:
        weed.start()
        sys.stderr.write(f"\n[e2e] {name} answered S3 after {weed.ready_secs:.1f}s\n")
        weed.create_bucket("regcache")
    except BaseException:
        weed.stop()
        raise
    return weed


@pytest.fixture(scope="session")
def seaweedfs(workdir, pki):
    """A real S3 server (SeaweedFS) with the bucket `regcache`, over HTTP and HTTPS (the suite's
    server certificate); see e2elib/s3.py."""
    weed = _start_seaweedfs("seaweedfs", workdir, tls=(pki.server_cert, pki.server_key))
    try:
        yield weed
    finally:
        weed.stop()


@pytest.fixture(scope="session")
def start_seaweedfs(workdir):
    """Factory for extra SeaweedFS servers (bucket `regcache`, plain HTTP), for tests that kill
    theirs; all stopped at session end."""
    made = []

    def make(name):
        made.append(_start_seaweedfs(name, workdir))
        return made[-1]
    yield make
    for weed in made:
        weed.stop()


@pytest.fixture(scope="session")
def containerd_daemon(workdir):
    d = ContainerdDaemon(workdir)
    try:
        yield d.start()
    finally:
        d.stop()


@pytest.fixture(scope="session")
def make_clients(workdir, pki, containerd_daemon):
    """clients(mirror) -> {"docker": ..., "containerd": ..., "skopeo": ...} for that mirror."""
    cache = {}

    def make(mirror):
        if mirror.name not in cache:
            cache[mirror.name] = {
                "docker": DockerClient(workdir, mirror, containerd_daemon),
                "containerd": ContainerdClient(workdir, mirror, containerd_daemon),
                "skopeo": SkopeoClient(workdir, mirror, pki),
            }
        return cache[mirror.name]
    return make


@pytest.fixture(scope="session")
def clients(make_clients, target):
    return make_clients(target.mirror)
