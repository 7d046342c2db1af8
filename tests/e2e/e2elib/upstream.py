"""The Docker-Hub stand-in: distribution registry (TLS, token auth, storage
redirect middleware), the token server and the nginx "CDN" on 127.0.0.2."""
import json
import os
import re
import socket
import sys

from .procs import ManagedProcess
from .util import free_port, https_request, require_tool, wait_until

SERVICE = "registry.e2e.test"
ISSUER = "regcache-e2e-token-issuer"
REGCACHE_USER, REGCACHE_PASSWORD = "ci", "s3cret"       # only regcache knows these
PUSH_USER, PUSH_PASSWORD = "pusher", "push-only-for-the-suite"
CDN_HOST = "127.0.0.2"

TOKEN_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenserver.py")


class Upstream:
    """name: its directory under workdir (a second registry gets its own: storage, token
    server, CDN, logs); service: the token service name its registry and token server use;
    slow_digests: the blob digest (or digests) the CDN trickles while `set_cdn_slow(True)`."""

    def __init__(self, workdir, pki, slow_digests, name="upstream", service=SERVICE):
        self.name = name
        self.service = service
        self.dir = os.path.join(workdir, name)
        self.pki = pki
        self.storage = os.path.join(self.dir, "storage")
        os.makedirs(self.storage, exist_ok=True)
        self.reg_port = free_port()
        self.token_port = free_port()
        self.cdn_port = free_port(CDN_HOST)
        self.registry_access_log = os.path.join(self.dir, "registry-access.log")
        self.registry_log = os.path.join(self.dir, "registry.log")
        self.token_log = os.path.join(self.dir, "token-requests.jsonl")
        self.cdn_access_log = os.path.join(self.dir, "cdn-access.jsonl")
        self.cdn_error_log = os.path.join(self.dir, "cdn-error.log")
        self.slow_flag = os.path.join(self.dir, "cdn-slow-big-blob")
        self.slow_digests = [slow_digests] if isinstance(slow_digests, str) else list(slow_digests)
        self.procs = {}
        self._write_configs()

    # ------------------------------------------------------------ configs
    @property
    def _suffix(self):
        return "" if self.name == "upstream" else f"-{self.name}"

    @property
    def registry_url(self):
        return f"https://127.0.0.1:{self.reg_port}"

    @property
    def realm(self):
        return f"https://127.0.0.1:{self.token_port}/token"

    def _write_configs(self):
        self.registry_config = os.path.join(self.dir, "registry.yml")
        with open(self.registry_config, "w") as f:
            f.write(f"""version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {self.storage}
  delete:
    enabled: true
  redirect:
    disable: false
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{self.reg_port}
  secret: regcache-e2e-upload-secret
  tls:
    certificate: {self.pki.server_cert}
    key: {self.pki.server_key}
auth:
  token:
    realm: {self.realm}
    service: {self.service}
    issuer: {ISSUER}
    rootcertbundle: {self.pki.ca_cert}
middleware:
  storage:
    - name: redirect
      options:
        baseurl: https://{CDN_HOST}:{self.cdn_port}
""")
        # the big layers: slowed down while a test has the flag file present
        slow_locations = "".join(f"""
        location = /docker/registry/v2/blobs/sha256/{d[7:9]}/{d[7:]}/data {{
            set $slow_rate 0;
            if (-f {self.slow_flag}) {{ set $slow_rate 12m; }}
            limit_rate $slow_rate;
        }}""" for d in self.slow_digests)
        ngx = os.path.join(self.dir, "nginx")
        for sub in ("", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(ngx, sub), exist_ok=True)
        self.nginx_config = os.path.join(ngx, "nginx.conf")
        with open(self.nginx_config, "w") as f:
            f.write(f"""# regcache e2e "CDN": serves the registry's storage like S3/Cloudflare would
user root;
daemon off;
# one process: it dies with the suite (PDEATHSIG) even when the suite is SIGKILLed
master_process off;
pid {ngx}/nginx.pid;
error_log {self.cdn_error_log} info;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path {ngx}/client_body;
    proxy_temp_path {ngx}/proxy;
    fastcgi_temp_path {ngx}/fastcgi;
    uwsgi_temp_path {ngx}/uwsgi;
    scgi_temp_path {ngx}/scgi;
    map $http_authorization $has_auth {{ "" 0; default 1; }}
    log_format cdn escape=json '{{"method":"$request_method","uri":"$uri","status":$status,'
        '"bytes":$body_bytes_sent,"auth":"$has_auth","range":"$http_range",'
        '"rt":"$request_time","ua":"$http_user_agent","time":"$time_iso8601"}}';
    access_log {self.cdn_access_log} cdn;
    server {{
        listen {CDN_HOST}:{self.cdn_port} ssl;
        ssl_certificate {self.pki.server_cert};
        ssl_certificate_key {self.pki.server_key};
        root {self.storage};
        # like a presigned S3 URL: any Authorization header is a 400
        if ($http_authorization) {{ return 400 "Authorization header not allowed\\n"; }}
        location = /healthz {{ return 200 "ok\\n"; }}
        location /docker/registry/v2/blobs/ {{ }}{slow_locations}
        location / {{ return 404; }}
    }}
}}
""")

    # ------------------------------------------------------------ lifecycle
    def start(self):
        reg = require_tool("docker-registry", "docker-registry")
        ngx = require_tool("nginx", "nginx-light")
        require_tool("openssl", "openssl")
        if "token" not in self.procs:
            self.procs["token"] = ManagedProcess(
                f"token-server{self._suffix}",
                [sys.executable, TOKEN_SERVER, "--listen", f"127.0.0.1:{self.token_port}",
                 "--tls-cert", self.pki.server_cert, "--tls-key", self.pki.server_key,
                 "--sign-cert", self.pki.token_cert, "--sign-key", self.pki.token_key,
                 "--issuer", ISSUER, "--service", self.service, "--log", self.token_log,
                 "--user", f"{REGCACHE_USER}:{REGCACHE_PASSWORD}:pull",
                 "--user", f"{PUSH_USER}:{PUSH_PASSWORD}:pull,push"],
                os.path.join(self.dir, "token-server.log"))
            self.procs["registry"] = ManagedProcess(
                f"registry{self._suffix}", [reg, "serve", self.registry_config], self.registry_log,
                stdout_path=self.registry_access_log)
            self.procs["cdn"] = ManagedProcess(
                f"nginx-cdn{self._suffix}", [ngx, "-p", os.path.join(self.dir, "nginx"), "-c", self.nginx_config],
                os.path.join(self.dir, "nginx.stderr.log"))
        for p in self.procs.values():
            p.start()
        ca = self.pki.ca_cert

        def ready(name, host, port, path, want):
            p = self.procs[name]

            def probe():
                p.check_alive()
                return https_request(host, port, "GET", path, ca, timeout=5)[0] == want
            wait_until(probe, 30, f"{name} on {host}:{port}")

        ready("token", "127.0.0.1", self.token_port, "/healthz", 200)
        ready("registry", "127.0.0.1", self.reg_port, "/v2/", 401)
        ready("cdn", CDN_HOST, self.cdn_port, "/healthz", 200)

    def stop(self):
        """Stop every server and wait until none of their ports accepts a connection."""
        for p in self.procs.values():
            p.stop()
        wait_until(lambda: _refused("127.0.0.1", self.reg_port) and _refused("127.0.0.1", self.token_port)
                   and _refused(CDN_HOST, self.cdn_port), 30, "upstream ports to close")

    def running(self):
        return any(p.alive() for p in self.procs.values())

    def set_cdn_slow(self, slow):
        if slow:
            open(self.slow_flag, "w").close()
        elif os.path.exists(self.slow_flag):
            os.unlink(self.slow_flag)

    def log_tails(self, n=12):
        out = []
        for title, path in (("registry access log", self.registry_access_log),
                            ("CDN access log", self.cdn_access_log),
                            ("token requests", self.token_log)):
            try:
                with open(path, errors="replace") as f:
                    lines = f.read().splitlines()[-n:]
            except OSError:
                lines = ["(none)"]
            out.append(f"--- {title} ({path}) ---\n" + "\n".join(line[:400] for line in lines))
        for p in self.procs.values():
            if p.proc is not None and not p.alive():
                out.append(f"--- {p.name} is not running ---\n{p.log_tail(10)}")
        return "\n".join(out)

    # ------------------------------------------------------------ log parsing
    def counters(self):
        return Counters(self)


_ACCESS_RE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>/v2/\S*) HTTP/[\d.]+" (?P<status>\d{3})')
_PATH_RE = re.compile(r"^/v2/(?P<repo>.+)/(?P<kind>blobs|manifests)/(?P<ref>[^/?]+)(?:\?.*)?$")


def registry_requests(path):
    """Parsed registry access log (gorilla combined format on the registry's stdout)."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path, errors="replace") as f:
        for line in f:
            m = _ACCESS_RE.search(line)
            if not m:
                continue
            pm = _PATH_RE.match(m["path"])
            if not pm:
                if m["path"].startswith("/v2/") and "/blobs/uploads" not in m["path"]:
                    out.append({"method": m["method"], "kind": "other", "repo": None, "ref": m["path"],
                                "status": int(m["status"])})
                continue
            out.append({"method": m["method"], "kind": pm["kind"], "repo": pm["repo"], "ref": pm["ref"],
                        "status": int(m["status"])})
    return out


def cdn_requests(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            m = re.match(r"^/docker/registry/v2/blobs/sha256/[0-9a-f]{2}/([0-9a-f]{64})/data$", r["uri"])
            r["digest"] = "sha256:" + m[1] if m else None
            out.append(r)
    return out


def token_requests(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Counters:
    """A snapshot of how far the three upstream logs have grown; delta() gives
    the requests since the snapshot."""

    def __init__(self, up):
        self.up = up
        self.n_reg = len(registry_requests(up.registry_access_log))
        self.n_cdn = len(cdn_requests(up.cdn_access_log))
        self.n_tok = len(token_requests(up.token_log))

    def delta(self):
        return Delta(registry_requests(self.up.registry_access_log)[self.n_reg:],
                     cdn_requests(self.up.cdn_access_log)[self.n_cdn:],
                     token_requests(self.up.token_log)[self.n_tok:])


class Delta:
    def __init__(self, reg, cdn, tok):
        self.registry, self.cdn, self.tokens = reg, cdn, tok

    @property
    def registry_blob(self):
        return [r for r in self.registry if r["kind"] == "blobs" and r["method"] in ("GET", "HEAD")]

    @property
    def registry_manifest(self):
        return [r for r in self.registry if r["kind"] == "manifests" and r["method"] in ("GET", "HEAD")]

    def cdn_gets(self, digest):
        return [r for r in self.cdn if r["digest"] == digest and r["method"] == "GET"]

    def summary(self):
        def fmt(rs, keys):
            return "\n".join("   " + " ".join(str(r.get(k)) for k in keys) for r in rs[:60])
        return (f"registry blob requests ({len(self.registry_blob)}):\n"
                f"{fmt(self.registry_blob, ['method', 'repo', 'ref', 'status'])}\n"
                f"registry manifest requests ({len(self.registry_manifest)}):\n"
                f"{fmt(self.registry_manifest, ['method', 'repo', 'ref', 'status'])}\n"
                f"CDN requests ({len(self.cdn)}):\n{fmt(self.cdn, ['method', 'uri', 'status', 'bytes', 'auth'])}")


def _refused(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return False
    except OSError:
        return True
