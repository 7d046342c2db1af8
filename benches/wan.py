#!/usr/bin/env python3
"""The benchmark's WAN-shaped link (figures 13-17, benches/README.md) and the upstream behind it.

netem is not in this kernel, so the link is built from parts: a network namespace of our own
(NS) joined to this host by a veth pair (HOST_ADDR on this side; REG_ADDR and CDN_ADDR in the
namespace, addresses that exist only on that pair), `tc tbf` on both ends for the rate, and
benches/delayer (an NFQUEUE program) on both ends for the latency: a raw PREROUTING rule on each
side queues every packet arriving from the veth, and the delayer of that side holds it for half
the RTT. The upstream (distribution, its token server, the nginx CDN) runs inside the namespace
on the storage the loopback upstream was filled with; mirrors and clients stay on this host.

`python3 benches/wan.py down` removes whatever a run left (namespace, veth, the host's rule, and
processes still inside the namespace): run.sh calls it on exit, and `Link.up` calls it first.
"""
import copy
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "e2e"))

from e2elib import upstream as up_mod  # noqa: E402
from e2elib.procs import ManagedProcess  # noqa: E402
from e2elib.util import https_request, wait_until  # noqa: E402

NS = "rcbench-wan"
HOST_IF, NS_IF = "rcbwan0", "rcbwan1"
HOST_ADDR, REG_ADDR, CDN_ADDR = "10.200.0.1", "10.200.0.2", "10.200.0.3"
PREFIX = 24
RTT_MS = float(os.environ.get("BENCH_WAN_RTT_MS", "25"))
RATE_MBIT = float(os.environ.get("BENCH_WAN_MBIT", "100"))
# NFQUEUE numbers; each side's queue lives in its own network namespace
QUEUE_HOST, QUEUE_NS = 4242, 4243
RULE_COMMENT = "regcache-bench-wan"
DELAYER = os.environ.get("BENCH_DELAYER") or os.path.join(HERE, "delayer", "target", "release",
                                                          "regcache-bench-delayer")


def _run(argv, check=True):
    r = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} -> rc {r.returncode}: {r.stderr.strip()[-500:]}")
    return r


def _host_rule(op):
    return ["iptables", "-w", "5", "-t", "raw", op, "PREROUTING", "-i", HOST_IF, "-m", "comment",
            "--comment", RULE_COMMENT, "-j", "NFQUEUE", "--queue-num", str(QUEUE_HOST)]


def ns_argv(argv):
    """argv run inside the namespace (`ip netns exec` execs it: the PID is argv's own)."""
    return ["ip", "netns", "exec", NS] + [str(a) for a in argv]


def down():
    """Remove everything a run may have left; idempotent, never raises. Processes still inside
    NS are this benchmark's (nothing else runs in a namespace it created): killed by PID."""
    if not shutil.which("ip"):
        return
    exists = NS in _run(["ip", "netns", "list"], check=False).stdout.split()
    if exists:
        for pid in _run(["ip", "netns", "pids", NS], check=False).stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ValueError, OSError):
                pass
        _run(["ip", "netns", "del", NS], check=False)   # takes its end of the veth pair with it
    if _run(["ip", "link", "show", HOST_IF], check=False).returncode == 0:
        _run(["ip", "link", "del", HOST_IF], check=False)
    if shutil.which("iptables"):
        for _ in range(10):
            if _run(_host_rule("-C"), check=False).returncode != 0:
                break
            _run(_host_rule("-D"), check=False)


def _queue_bound(num, in_ns):
    """Whether a program is bound to NFQUEUE `num` (of NS, or of this host)."""
    argv = ["cat", "/proc/net/netfilter/nfnetlink_queue"]
    out = _run(ns_argv(argv) if in_ns else argv, check=False).stdout
    return any(line.split()[:1] == [str(num)] for line in out.splitlines())


class Link:
    """The shaped link, up until close(): RTT_MS round trip, RATE_MBIT each way."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "wan-link")
        os.makedirs(self.dir, exist_ok=True)
        self.delayers = []

    def up(self):
        for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2"), ("iptables", "iptables")):
            if not shutil.which(tool):
                raise RuntimeError(f"{tool} not found: install {pkg} (benches/run.sh does)")
        if not os.access(DELAYER, os.X_OK):
            raise RuntimeError(f"{DELAYER} not built: benches/run.sh builds it (cargo build --release "
                               "--locked in benches/delayer)")
        down()
        _run(["ip", "netns", "add", NS])
        _run(["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS])
        _run(["ip", "addr", "add", f"{HOST_ADDR}/{PREFIX}", "dev", HOST_IF])
        _run(["ip", "link", "set", HOST_IF, "up"])
        for addr in (REG_ADDR, CDN_ADDR):
            _run(["ip", "-n", NS, "addr", "add", f"{addr}/{PREFIX}", "dev", NS_IF])
        _run(["ip", "-n", NS, "link", "set", NS_IF, "up"])
        _run(["ip", "-n", NS, "link", "set", "lo", "up"])
        # the rate: a token bucket on each end's egress; its queue (50 ms, about two
        # bandwidth-delay products) lets one TCP stream fill the link without tail drops
        tbf = ["root", "tbf", "rate", f"{RATE_MBIT:g}mbit", "burst", "32kb", "latency", "50ms"]
        _run(["tc", "qdisc", "replace", "dev", HOST_IF] + tbf)
        _run(ns_argv(["tc", "qdisc", "replace", "dev", NS_IF] + tbf))
        # the latency: each side holds what arrives from the veth for half the RTT
        half = f"{RTT_MS / 2:g}"
        for name, argv, num, in_ns in (("delayer-host", [DELAYER, QUEUE_HOST, half], QUEUE_HOST, False),
                                       ("delayer-ns", ns_argv([DELAYER, QUEUE_NS, half]), QUEUE_NS, True)):
            p = ManagedProcess(name, argv, os.path.join(self.dir, f"{name}.log")).start()
            self.delayers.append(p)

            def bound(p=p, num=num, in_ns=in_ns):
                p.check_alive()
                return _queue_bound(num, in_ns)
            wait_until(bound, 10, f"{name} to bind NFQUEUE {num}")
        # rules only once the delayers listen: a queue nobody reads drops its packets
        _run(_host_rule("-I"))
        _run(ns_argv(["iptables", "-w", "5", "-t", "raw", "-I", "PREROUTING", "-i", NS_IF, "-j", "NFQUEUE",
                      "--queue-num", QUEUE_NS]))
        return self

    def check(self):
        for p in self.delayers:
            p.check_alive()

    def close(self):
        down()
        for p in self.delayers:
            p.stop(timeout=5)
        self.delayers = []

    def ping(self, count=20):
        """(min, avg, max) RTT in ms to REG_ADDR: `ping -U`, user to user (plain ping times the
        reply by its arrival at the host's interface, before the host side's delay)."""
        r = _run(["ping", "-U", "-n", "-q", "-c", count, "-i", "0.2", "-W", "2", REG_ADDR], check=False)
        m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", r.stdout)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"ping {REG_ADDR}: rc {r.returncode} {r.stdout[-300:]} {r.stderr[-300:]}")
        return tuple(float(x) for x in m.groups())


class WanUpstream(up_mod.Upstream):
    """The loopback upstream's twin inside NS: registry and token server on REG_ADDR, the CDN on
    CDN_ADDR, serving `storage` (the loopback upstream's, already pushed to) with a server
    certificate of the same CA for those addresses."""

    def __init__(self, workdir, pki, storage, big_blob_digest):
        self._shared_storage = storage
        wan_pki = copy.copy(pki)
        wan_pki.server_cert, wan_pki.server_key = pki.issue_server_cert(
            "wan-server", "regcache bench WAN upstream", f"IP:{REG_ADDR},IP:{CDN_ADDR}")
        super().__init__(workdir, wan_pki, big_blob_digest, name="upstream-wan")

    @property
    def registry_url(self):
        return f"https://{REG_ADDR}:{self.reg_port}"

    @property
    def realm(self):
        return f"https://{REG_ADDR}:{self.token_port}/token"

    def cdn_url(self, digest):
        hexd = digest.split(":")[1]
        return f"https://{CDN_ADDR}:{self.cdn_port}/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"

    def _write_configs(self):
        self.storage = self._shared_storage
        super()._write_configs()
        for path, old, new in ((self.registry_config, f"addr: 127.0.0.1:{self.reg_port}\n",
                                f"addr: {REG_ADDR}:{self.reg_port}\n"),
                               (self.registry_config, f"baseurl: https://{up_mod.CDN_HOST}:{self.cdn_port}\n",
                                f"baseurl: https://{CDN_ADDR}:{self.cdn_port}\n"),
                               (self.nginx_config, f"listen {up_mod.CDN_HOST}:{self.cdn_port} ssl;",
                                f"listen {CDN_ADDR}:{self.cdn_port} ssl;")):
            with open(path) as f:
                text = f.read()
            if text.count(old) != 1:
                raise RuntimeError(f"{path}: expected one {old!r} (tests/e2e/e2elib/upstream.py changed?)")
            with open(path, "w") as f:
                f.write(text.replace(old, new))

    def start(self):
        reg, ngx = shutil.which("docker-registry"), shutil.which("nginx")
        self.procs["token"] = ManagedProcess(
            "token-server-wan",
            ns_argv([sys.executable, up_mod.TOKEN_SERVER, "--listen", f"{REG_ADDR}:{self.token_port}",
                     "--tls-cert", self.pki.server_cert, "--tls-key", self.pki.server_key,
                     "--sign-cert", self.pki.token_cert, "--sign-key", self.pki.token_key,
                     "--issuer", up_mod.ISSUER, "--service", self.service, "--log", self.token_log,
                     "--user", f"{up_mod.REGCACHE_USER}:{up_mod.REGCACHE_PASSWORD}:pull"]),
            os.path.join(self.dir, "token-server.log"))
        self.procs["registry"] = ManagedProcess("registry-wan", ns_argv([reg, "serve", self.registry_config]),
                                                self.registry_log, stdout_path=self.registry_access_log)
        self.procs["cdn"] = ManagedProcess(
            "nginx-cdn-wan", ns_argv([ngx, "-p", os.path.join(self.dir, "nginx"), "-c", self.nginx_config]),
            os.path.join(self.dir, "nginx.stderr.log"))
        for p in self.procs.values():
            p.start()
        for name, host, port, path, want in (("token", REG_ADDR, self.token_port, "/healthz", 200),
                                             ("registry", REG_ADDR, self.reg_port, "/v2/", 401),
                                             ("cdn", CDN_ADDR, self.cdn_port, "/healthz", 200)):
            p = self.procs[name]

            def probe(p=p, host=host, port=port, path=path, want=want):
                p.check_alive()
                return https_request(host, port, "GET", path, self.pki.ca_cert, timeout=5)[0] == want
            wait_until(probe, 30, f"{p.name} on {host}:{port}")
        return self

    def stop(self):
        for p in self.procs.values():
            p.stop(timeout=5)


if __name__ == "__main__":
    if sys.argv[1:] != ["down"]:
        sys.exit("usage: wan.py down   (removes what a benchmark run left of the WAN link)")
    down()
