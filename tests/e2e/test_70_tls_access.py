"""HTTPS and access control of regcache itself.

* [tls]: skopeo and containerd pull over HTTPS (certificate from the suite's CA); curl gets h2 by
  ALPN (and HTTP/1.1 when it asks); SIGHUP after replacing the files: new connections get the
  new certificate, a connection opened before keeps working, the process keeps serving; a broken
  file on SIGHUP keeps the current certificate.
* [access] htpasswd (bcrypt, as `htpasswd -B` writes): no/wrong credentials are 401 with
  `WWW-Authenticate: Basic realm="regcache"` and reach no upstream; skopeo (--src-creds,
  `skopeo login`) and containerd (ctr --user) pull with them.
* [access] allow: another address's connection is closed before a byte is read, even with valid
  credentials.
"""
import http.client
import os
import shutil
import signal

import pytest

from conftest import LOG_SOURCES, Target
from e2elib.checks import pull_and_check
from e2elib.clients import ContainerdClient, Mirror, SkopeoClient
from e2elib.images import MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST
from e2elib.net import cert_serial, curl, describe_der, peer_cert
from e2elib.regcache import Regcache
from e2elib.util import run, sha256_bytes, ssl_context, wait_until

pytestmark = pytest.mark.needs_regcache

ACCEPT = ", ".join([MT_DOCKER_MANIFEST, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_OCI_INDEX])
USER, PASSWORD = "ci-puller", "pull-through-s3cret"


def _start(rc):
    LOG_SOURCES.append((f"{rc.name} log (tail)", lambda: rc.proc.log_tail(60)))
    rc.start()
    return rc


def _install(src_cert, src_key, cert, key):
    """Put a certificate and key in place the way a renewal would (atomic renames)."""
    for src, dst in ((src_key, key), (src_cert, cert)):
        shutil.copyfile(src, dst + ".new")
        os.replace(dst + ".new", dst)


def _log(rc):
    with open(rc.log, errors="replace") as f:
        return f.read()


# ----------------------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def tls_files(workdir, pki):
    d = os.path.join(workdir, "regcache-tls-files")
    os.makedirs(d, exist_ok=True)
    first = pki.issue_server_cert("regcache-tls-1", "regcache e2e TLS one")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    _install(*first, cert, key)
    return {"cert": cert, "key": key, "first": first}


@pytest.fixture(scope="module")
def rc_tls(workdir, pki, upstream, tls_files):
    rc = Regcache("regcache-tls", workdir, upstream, pki, tls=(tls_files["cert"], tls_files["key"]))
    try:
        yield _start(rc)
    finally:
        rc.stop()


@pytest.fixture(scope="module")
def tls_target(rc_tls, pki):
    return Target(Mirror("regcache-tls", "127.0.0.1", rc_tls.port, "https", pki.ca_cert), rc_tls)


def test_https_pulls_skopeo_and_containerd(workdir, pki, tls_target, containerd_daemon, upstream, catalog):
    """skopeo (registries.conf mirror, insecure = false, --src-cert-dir with the suite CA) and
    containerd (hosts.toml with ca = suite CA) pull through regcache's HTTPS listener."""
    sk = SkopeoClient(workdir, tls_target.mirror, pki)
    with open(sk.conf) as f:
        assert "insecure = false" in f.read()
    pull_and_check(sk, catalog["multiarch"], tls_target, upstream)                  # cold, --all
    ctr = ContainerdClient(workdir, tls_target.mirror, containerd_daemon)
    with open(os.path.join(ctr.hosts_dir, "docker.io", "hosts.toml")) as f:
        hosts = f.read()
    assert f'[host."https://127.0.0.1:{tls_target.regcache.port}"]' in hosts and f'ca = "{pki.ca_cert}"' in hosts, hosts
    pull_and_check(ctr, catalog["multiarch"], tls_target, upstream)                 # warm
    pull_and_check(ctr, catalog["alpine"], tls_target, upstream, by_digest=True)    # cold
    # the same listener does not talk plain HTTP
    r = curl(f"http://127.0.0.1:{tls_target.regcache.port}/v2/", timeout=10)
    assert r.status in (0, 400), f"plain HTTP on the TLS port answered {r!r}"


def test_alpn_h2_and_http11(rc_tls, pki, catalog):
    base = f"https://127.0.0.1:{rc_tls.port}"
    img = catalog["alpine"]
    r2 = curl(f"{base}/v2/library/alpine/manifests/3", cacert=pki.ca_cert, http="2", headers={"Accept": ACCEPT})
    assert r2.rc == 0 and r2.http_version == "2", f"curl --http2 did not negotiate h2: {r2!r}"
    assert r2.status == 200 and sha256_bytes(r2.body) == img.digest, r2
    r1 = curl(f"{base}/v2/", cacert=pki.ca_cert, http="1.1")
    assert r1.status == 200 and r1.http_version == "1.1", r1
    # without the suite's CA the certificate is not trusted: it really is the suite's chain
    bad = curl(f"{base}/v2/", http="2", timeout=10)
    assert bad.rc == 60 and bad.status == 0, f"curl trusted regcache's certificate without the CA: {bad!r}"


def test_sighup_reloads_certificate_without_dropping_connections(rc_tls, tls_files, tls_target, pki,
                                                                  workdir, upstream, catalog):
    port, ca = rc_tls.port, pki.ca_cert
    serial1 = cert_serial(tls_files["first"][0])
    assert peer_cert("127.0.0.1", port, ca)[0] == serial1

    # a keep-alive connection opened before the reload
    old = http.client.HTTPSConnection("127.0.0.1", port, context=ssl_context(ca), timeout=10)
    try:
        old.request("GET", "/v2/")
        r = old.getresponse()
        assert r.status == 200 and r.read() == b"{}"
        old_sock = old.sock
        assert describe_der(old_sock.getpeercert(binary_form=True))[0] == serial1

        second = pki.issue_server_cert("regcache-tls-2", "regcache e2e TLS two")
        serial2 = cert_serial(second[0])
        assert serial2 != serial1
        _install(*second, tls_files["cert"], tls_files["key"])
        pid = rc_tls.proc.pid
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: peer_cert("127.0.0.1", port, ca) == (serial2, "regcache e2e TLS two"), 15,
                   "new TLS connections to be served the new certificate after SIGHUP")
        rc_tls.proc.check_alive()
        assert rc_tls.proc.pid == pid
        assert "SIGHUP: TLS certificate reloaded" in _log(rc_tls)

        # the old connection is still open and served (same socket, still the old certificate)
        old.request("GET", "/v2/library/alpine/manifests/3", headers={"Accept": ACCEPT})
        r = old.getresponse()
        body = r.read()
        assert old.sock is old_sock, "the connection opened before SIGHUP was dropped"
        assert describe_der(old.sock.getpeercert(binary_form=True))[0] == serial1
        assert r.status == 200 and sha256_bytes(body) == catalog["alpine"].digest
    finally:
        old.close()

    # curl (new connection) sees the new subject; a client pulls over the new certificate
    r = curl(f"https://127.0.0.1:{port}/v2/", cacert=ca, http="2")
    assert r.status == 200 and "CN=regcache e2e TLS two" in r.stderr, r
    sk = SkopeoClient(workdir, Mirror("regcache-tls-after-hup", "127.0.0.1", port, "https", ca), pki)
    pull_and_check(sk, catalog["layers30"], tls_target, upstream)

    # a broken certificate file on SIGHUP: the current certificate stays in use
    with open(tls_files["cert"], "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    try:
        os.kill(rc_tls.proc.pid, signal.SIGHUP)
        wait_until(lambda: "reloading the TLS certificate failed" in _log(rc_tls), 15,
                   "regcache to log the failed reload")
        rc_tls.proc.check_alive()
        assert peer_cert("127.0.0.1", port, ca)[0] == serial2
        assert curl(f"https://127.0.0.1:{port}/v2/", cacert=ca).status == 200
    finally:
        _install(*second, tls_files["cert"], tls_files["key"])


# -------------------------------------------------------------------------- access

@pytest.fixture(scope="module")
def htpasswd_file(workdir):
    try:
        import bcrypt
    except ImportError:
        pytest.fail("python module 'bcrypt' missing: run scripts/install-test-deps.sh (pip 'bcrypt')",
                    pytrace=False)
    d = os.path.join(workdir, "regcache-access-files")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "htpasswd")

    def entry(user, pw):   # what `htpasswd -B -C 5` writes: $2y$, cost 5
        return f"{user}:" + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode().replace("$2b$", "$2y$", 1)
    with open(path, "w") as f:
        f.write(entry("someone-else", "other-password") + "\n" + entry(USER, PASSWORD) + "\n")
    return path


@pytest.fixture(scope="module")
def rc_auth(workdir, pki, upstream, htpasswd_file):
    """HTTPS + htpasswd (how README says to deploy credentials)."""
    cert = pki.issue_server_cert("regcache-auth", "regcache e2e auth")
    # Every client here is 127.0.0.1, and the tests send a dozen wrong credentials on purpose.
    rc = Regcache("regcache-auth", workdir, upstream, pki, tls=cert, htpasswd=htpasswd_file, max_failures=100)
    try:
        yield _start(rc)
    finally:
        rc.stop()


@pytest.fixture(scope="module")
def auth_target(rc_auth, pki):
    return Target(Mirror("regcache-auth", "127.0.0.1", rc_auth.port, "https", pki.ca_cert), rc_auth)


def test_no_or_wrong_credentials_get_401_basic_challenge(rc_auth, pki, upstream, catalog):
    base = f"https://127.0.0.1:{rc_auth.port}"
    before = upstream.counters()
    for user in (None, f"{USER}:wrong-password", f"nobody:{PASSWORD}", f"{USER}:"):
        for path in ("/v2/", "/v2/library/alpine/manifests/3",
                     f"/v2/library/alpine/blobs/{catalog['alpine'].amd64.layer_digests[0]}",
                     "/v2/library/alpine/tags/list"):
            r = curl(base + path, cacert=pki.ca_cert, user=user, headers={"Accept": ACCEPT})
            assert r.status == 401, f"{path} with credentials {user!r}: {r!r}"
            assert r.headers.get("www-authenticate") == 'Basic realm="regcache"', r.headers
            assert r.oci_codes() == ["UNAUTHORIZED"], r
    d = before.delta()
    assert not (d.registry or d.cdn or d.tokens), "unauthenticated requests reached the upstream:\n" + d.summary()
    r = curl(base + "/v2/library/alpine/manifests/3", cacert=pki.ca_cert, user=f"{USER}:{PASSWORD}",
             headers={"Accept": ACCEPT}, http="2")
    assert r.status == 200 and sha256_bytes(r.body) == catalog["alpine"].digest, r


def test_skopeo_with_credentials(workdir, pki, rc_auth, auth_target, upstream, catalog):
    sk = SkopeoClient(workdir, auth_target.mirror, pki)
    img = catalog["alpine"]
    # without credentials: refused (a direct reference: no fallback to the mirror's primary)
    r = run(sk.base_argv() + ["inspect", "--raw", "--no-creds", "--cert-dir", pki.cert_dir,
                              f"docker://127.0.0.1:{rc_auth.port}/{img.repo}:{img.tag}"],
            env=sk.env, timeout=60, check=False, log=sk.log)
    assert r.rc != 0 and "unauthorized" in r.err.lower(), r
    # skopeo copy --src-creds straight from regcache
    dest = os.path.join(sk.dir, "creds-direct")
    r = run(sk.base_argv() + ["copy", "--src-creds", f"{USER}:{PASSWORD}", "--src-cert-dir", pki.cert_dir,
                              "--retry-times", "0", f"docker://127.0.0.1:{rc_auth.port}/{img.repo}:{img.tag}",
                              f"dir:{dest}"], env=sk.env, timeout=120, check=False, log=sk.log)
    assert r.rc == 0, r
    assert sk.read_digest(img, dest) == img.digest
    auth_target.regcache.fetched.update(img.amd64.blobs)
    shutil.rmtree(dest, ignore_errors=True)
    # `skopeo login` (checks the credentials against GET /v2/) and then a registries.conf mirror pull
    authfile = os.path.join(sk.dir, "auth.json")
    bad = run(sk.base_argv() + ["login", "--authfile", authfile, "--cert-dir", pki.cert_dir,
                                "-u", USER, "-p", "wrong", f"127.0.0.1:{rc_auth.port}"],
              env=sk.env, timeout=60, check=False, log=sk.log)
    assert bad.rc != 0, f"skopeo login succeeded with a wrong password: {bad!r}"
    run(sk.base_argv() + ["login", "--authfile", authfile, "--cert-dir", pki.cert_dir,
                          "-u", USER, "-p", PASSWORD, f"127.0.0.1:{rc_auth.port}"],
        env=sk.env, timeout=60, log=sk.log)
    sk_login = SkopeoClient(workdir, Mirror("regcache-auth-login", "127.0.0.1", rc_auth.port, "https", pki.ca_cert), pki)
    sk_login.env["REGISTRY_AUTH_FILE"] = authfile
    img = catalog["layers30"]
    dest = os.path.join(sk_login.dir, "login-pull")
    argv = [a for a in sk_login.copy_argv(img, dest) if a != "--src-no-creds"]
    r = run(argv, env=sk_login.env, timeout=300, check=False, log=sk_login.log)
    assert r.rc == 0, f"mirror pull with `skopeo login` credentials failed: {r!r}"
    assert sk_login.read_digest(img, dest) == img.digest
    shutil.rmtree(dest, ignore_errors=True)


def test_containerd_with_credentials(workdir, auth_target, containerd_daemon, upstream, catalog):
    ctr = ContainerdClient(workdir, auth_target.mirror, containerd_daemon)
    img = catalog["multiarch"]
    res = ctr.pull(img)
    assert not res.ok, f"containerd pulled through regcache without credentials: {res!r}"
    assert f"127.0.0.1:{auth_target.regcache.port}" in res.cmd.err and "401" in res.cmd.err, res
    res = ctr.pull(img, user=f"{USER}:{PASSWORD}")
    ctr.check(res, img)


@pytest.fixture(scope="module")
def rc_allow(workdir, pki, upstream, htpasswd_file):
    """Only 127.0.0.2 may use it (plus credentials)."""
    rc = Regcache("regcache-allow", workdir, upstream, pki, allow=["127.0.0.2/32"], htpasswd=htpasswd_file)
    try:
        yield _start(rc)
    finally:
        rc.stop()


def test_allow_list_closes_other_addresses_before_anything_else(workdir, pki, rc_allow, upstream, catalog):
    base = f"http://127.0.0.1:{rc_allow.port}"
    img = catalog["alpine"]
    good = f"{USER}:{PASSWORD}"
    before = upstream.counters()
    for iface in (None, "127.0.0.1", "127.0.0.3"):
        for user in (None, good):
            for path in ("/v2/", "/v2/library/alpine/manifests/3", "/healthz", "/metrics"):
                r = curl(base + path, interface=iface, user=user, headers={"Accept": ACCEPT})
                assert r.status == 0 and r.rc != 0, f"{path} from {iface or 'default (127.0.0.1)'} user={user!r}: {r!r}"
    # a real client from 127.0.0.1, with valid credentials: refused
    sk = SkopeoClient(workdir, Mirror("regcache-allow", "127.0.0.1", rc_allow.port, "http"), pki)
    r = run(sk.base_argv() + ["inspect", "--raw", "--creds", good, "--tls-verify=false",
                              f"docker://127.0.0.1:{rc_allow.port}/{img.repo}:{img.tag}"],
            env=sk.env, timeout=60, check=False, log=sk.log)
    assert r.rc != 0, r
    d = before.delta()
    assert not (d.registry or d.cdn or d.tokens), "refused requests reached the upstream:\n" + d.summary()
    # from the allowed address: credentials still count
    r = curl(base + "/v2/", interface="127.0.0.2")
    assert r.status == 401 and r.headers.get("www-authenticate") == 'Basic realm="regcache"', r
    r = curl(base + "/v2/library/alpine/manifests/3", interface="127.0.0.2", user=good, headers={"Accept": ACCEPT})
    assert r.status == 200 and sha256_bytes(r.body) == img.digest, r
    log = _log(rc_allow)
    assert any("not allowed" in line and "peer=127.0.0.3:" in line for line in log.splitlines()), \
        "regcache logged no refused connection from 127.0.0.3"
