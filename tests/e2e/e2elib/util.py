import hashlib
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what, interval=0.05):
    """Poll pred() until it returns a truthy value; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def require_tool(name, package):
    """Path of a tool; a missing tool FAILS the test (never skips) and says what to install."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"required tool '{name}' not found on PATH: install it with "
                    f"scripts/install-test-deps.sh (Debian package '{package}')", pytrace=False)
    return path


def sha256_bytes(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def sha256_file(path, bufsize=4 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(bufsize)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def ssl_context(ca_file):
    ctx = ssl.create_default_context(cafile=str(ca_file))
    return ctx


def https_request(host, port, method, path, ca_file, headers=None, body=None, timeout=30):
    """One HTTPS request; returns (status, headers-dict-lowercase, body-bytes)."""
    conn = http.client.HTTPSConnection(host, port, context=ssl_context(ca_file), timeout=timeout)
    return _exchange(conn, method, path, headers, body)


def http_request(host, port, method, path, headers=None, body=None, timeout=30):
    """One plain HTTP request; returns (status, headers-dict-lowercase, body-bytes)."""
    return _exchange(http.client.HTTPConnection(host, port, timeout=timeout), method, path, headers, body)


def _exchange(conn, method, path, headers, body):
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


class CmdResult:
    def __init__(self, argv, rc, out, err, secs):
        self.argv, self.rc, self.out, self.err, self.secs = argv, rc, out, err, secs

    def __repr__(self):
        return (f"$ {' '.join(self.argv)}\n(rc={self.rc}, {self.secs:.1f}s)\n"
                f"--- stdout ---\n{self.out[-4000:]}\n--- stderr ---\n{self.err[-4000:]}")


def run(argv, timeout=300, env=None, check=True, log=None, cwd=None):
    """Run a client command; with check=True a non-zero exit fails with full output."""
    argv = [str(a) for a in argv]
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=cwd)
        res = CmdResult(argv, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
    except subprocess.TimeoutExpired as e:
        res = CmdResult(argv, -1, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""),
                        ((e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or ""))
                        + f"\nTIMEOUT after {timeout}s", time.monotonic() - t0)
    if log is not None:
        with open(log, "a") as f:
            f.write(repr(res) + "\n")
    if check and res.rc != 0:
        raise AssertionError(f"command failed:\n{res!r}")
    return res


def dir_size(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for fn in files:
            try:
                total += os.path.getsize(os.path.join(root, fn))
            except OSError:
                pass
    return total
