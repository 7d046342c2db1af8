#!/usr/bin/env python3
"""Docker-Hub-like token server (auth.docker.io stand-in) for the e2e suite.

GET /token?service=...&scope=repository:NAME:ACTIONS[&scope=...]
  * no Authorization  -> anonymous: pull on every repository except private/*
  * Basic ci:s3cret   -> pull on everything (these are regcache's credentials)
  * Basic pusher:...  -> pull,push on everything (the suite pushes its images)
  * bad credentials   -> 401
Issues RS256 JWTs whose header carries x5c = [signing cert], so distribution
verifies them against its rootcertbundle (the suite's CA).  Every request is
logged as one JSON line to --log.
"""
import argparse
import base64
import json
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

PRIVATE_PREFIX = "private/"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--tls-cert", required=True)
    ap.add_argument("--tls-key", required=True)
    ap.add_argument("--sign-cert", required=True)
    ap.add_argument("--sign-key", required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--user", action="append", default=[],
                    help="NAME:PASSWORD:ACTIONS (ACTIONS like pull or pull,push)")
    a = ap.parse_args()

    with open(a.sign_key, "rb") as f:
        sign_key = serialization.load_pem_private_key(f.read(), password=None)
    with open(a.sign_cert, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    users = {}
    for u in a.user:
        name, pw, actions = u.split(":", 2)
        users[name] = (pw, set(actions.split(",")))
    log_lock = threading.Lock()
    logf = open(a.log, "a", buffering=1)

    def log(rec):
        with log_lock:
            logf.write(json.dumps(rec, sort_keys=True) + "\n")

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # stderr access log too
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

        def _send(self, code, obj, extra=None):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            u = urlparse(self.path)
            if u.path == "/healthz":
                return self._send(200, {"ok": True})
            if u.path != "/token":
                return self._send(404, {"error": "not found"})
            q = parse_qs(u.query)
            scopes = q.get("scope", [])
            service = (q.get("service") or [""])[0]
            auth = self.headers.get("Authorization", "")
            rec = {"time": time.time(), "remote": self.client_address[0], "path": self.path,
                   "service": service, "scopes": scopes,
                   "user_agent": self.headers.get("User-Agent", ""),
                   "auth": "basic" if auth.startswith("Basic ") else ("other" if auth else "none")}
            account = None
            allowed = {"pull"}
            if auth:
                try:
                    assert auth.startswith("Basic ")
                    name, pw = base64.b64decode(auth[6:]).decode().split(":", 1)
                    assert name in users and users[name][0] == pw
                except Exception:  # noqa: BLE001
                    rec.update(status=401, account="(bad credentials)", granted=[])
                    log(rec)
                    return self._send(401, {"details": "incorrect username or password"},
                                      {"WWW-Authenticate": 'Basic realm="regcache-e2e"'})
                account = name
                allowed = users[name][1]
            granted = []
            for s in scopes:
                for one in s.split(" "):
                    parts = one.split(":")
                    if len(parts) < 3 or parts[0] != "repository":
                        continue
                    repo, actions = ":".join(parts[1:-1]), parts[-1].split(",")
                    if account is None and repo.startswith(PRIVATE_PREFIX):
                        ok = []
                    else:
                        ok = [x for x in actions if x in allowed or (x == "*" and "push" in allowed)]
                    granted.append({"type": "repository", "name": repo, "actions": ok})
            now = int(time.time())
            claims = {"iss": a.issuer, "sub": account or "", "aud": service or a.service,
                      "exp": now + 300, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex,
                      "access": granted}
            token = jwt.encode(claims, sign_key, algorithm="RS256", headers={"x5c": x5c})
            rec.update(status=200, account=account or "(anonymous)", granted=granted)
            log(rec)
            return self._send(200, {"token": token, "access_token": token, "expires_in": 300,
                                    "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.tls_cert, a.tls_key)

    class TLSServer(ThreadingHTTPServer):
        daemon_threads = True

        def finish_request(self, request, client_address):
            # TLS handshake in the per-connection thread, not in accept()
            request.settimeout(30)
            tls = ctx.wrap_socket(request, server_side=True)
            super().finish_request(tls, client_address)

    host, port = a.listen.rsplit(":", 1)
    srv = TLSServer((host, int(port)), H)
    sys.stderr.write(f"token server listening on {a.listen}\n")
    sys.stderr.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
