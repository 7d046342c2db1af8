"""curl as a client, TLS peer-certificate probes, a decoy TCP listener, a throttling TCP relay
and a hashing blob download."""
import hashlib
import http.client
import json
import os
import socket
import tempfile
import threading
import time

from cryptography import x509

from .util import require_tool, run, ssl_context


class CurlResult:
    def __init__(self, res, status, version, headers, body):
        self.cmd, self.status, self.http_version, self.headers, self.body = res, status, version, headers, body

    @property
    def rc(self):
        return self.cmd.rc

    @property
    def stderr(self):
        return self.cmd.err

    def json(self):
        return json.loads(self.body)

    def oci_codes(self):
        """The `code` of every error in an OCI error body."""
        try:
            return [e.get("code") for e in self.json().get("errors", [])]
        except (ValueError, AttributeError):
            return []

    def __repr__(self):
        return (f"<curl status={self.status} http={self.http_version} headers={self.headers} "
                f"body={self.body[:300]!r}>\n{self.cmd!r}")


def curl(url, *extra, cacert=None, interface=None, user=None, headers=None, head=False, http="1.1",
         timeout=30, log=None):
    """One curl request (never follows redirects). http: "1.1" or "2" (over TLS: ALPN h2).
    Returns a CurlResult; status 0 when curl got no HTTP answer (see .rc / .stderr)."""
    exe = require_tool("curl", "curl")
    with tempfile.TemporaryDirectory(prefix="curl-") as d:
        hdr, body = os.path.join(d, "h"), os.path.join(d, "b")
        argv = [exe, "-sS", "-v", "--max-time", str(timeout), "-D", hdr, "-o", body,
                "-w", "%{http_code} %{http_version}", "--http2" if http == "2" else "--http1.1"]
        if cacert:
            argv += ["--cacert", cacert]
        if interface:
            argv += ["--interface", interface]
        if user:
            argv += ["-u", user]
        if head:
            argv.append("-I")
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        argv += [*extra, url]
        res = run(argv, timeout=timeout + 10, check=False, log=log)
        parts = res.out.strip().split()
        status = int(parts[0]) if parts and parts[0].isdigit() else 0
        version = parts[1] if len(parts) > 1 else ""
        hs = {}
        if os.path.exists(hdr):
            with open(hdr, "rb") as f:
                for line in f.read().decode(errors="replace").splitlines():
                    k, sep, v = line.partition(":")
                    if sep and not line.startswith("HTTP/"):
                        hs[k.strip().lower()] = v.strip()
        data = b""
        if os.path.exists(body):
            with open(body, "rb") as f:
                data = f.read()
        return CurlResult(res, status, version, hs, data)


def cert_serial(pem_path):
    with open(pem_path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).serial_number


def peer_cert(host, port, ca_file, timeout=5):
    """(serial, subject CN) of the certificate a NEW TLS connection is served (verified by ca_file)."""
    ctx = ssl_context(ca_file)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            return describe_der(s.getpeercert(binary_form=True))


def describe_der(der):
    c = x509.load_der_x509_certificate(der)
    cn = c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return c.serial_number, (cn[0].value if cn else "")


class DecoyListener:
    """A plain TCP listener on a free 127.0.0.1 port that counts the connections it accepts
    (and closes them at once). For "this request must cause no connection" checks."""

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.host, self.port = self.sock.getsockname()
        self.peers = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="decoy", daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.peers.append(peer)
            conn.close()

    @property
    def connections(self):
        with self._lock:
            return len(self.peers)

    def close(self):
        if not self._closed:
            self._closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self._thread.join(timeout=5)


class SlowPort:
    """A TCP relay on 127.0.0.1 to `port` that holds what clients send to `rate` bytes/s while
    `rate` is set (e.g. regcache's uploads to a bucket server); answers pass at full speed."""

    def __init__(self, port, rate):
        self.target, self.rate = ("127.0.0.1", port), rate
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._pairs, self._lock = [], threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="slowport", daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src, dst, throttled):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if throttled and self.rate:
                    time.sleep(len(data) / self.rate)   # the throttle itself, not a wait
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        """Stop accepting (a shutdown wakes the blocked accept), cut every relayed connection."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=5)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


class BlobDownload:
    """A plain HTTP GET of a blob in a background thread that hashes what arrives and never holds
    it: `status`, `received` bytes, `sha256` ("sha256:<hex>" of what was received), `error`
    (how the body ended early, if it did), `headers`. join() waits for the end."""

    def __init__(self, host, port, path, timeout=120):
        self.host, self.port, self.path, self.timeout = host, port, path, timeout
        self.status, self.received, self.sha256, self.error = None, 0, None, None
        self.headers = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        h = hashlib.sha256()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path)
            r = conn.getresponse()
            self.status, self.headers = r.status, {k.lower(): v for k, v in r.getheaders()}
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                self.received += len(chunk)
            # read(amt) ends quietly when the connection closes before Content-Length bytes
            if r.length:
                self.error = http.client.IncompleteRead(b"", r.length)
        except (OSError, http.client.HTTPException) as e:
            self.error = e
        finally:
            conn.close()
            self.sha256 = "sha256:" + h.hexdigest()

    def join(self, timeout):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"GET {self.path} still running after {timeout}s"
        return self
