"""scripts/package-deb.sh: the Debian package.  Its control fields, files (modes and owners),
conffiles and systemd unit (deploy/regcache.service running /usr/bin/regcache); its maintainer
scripts run against logging stand-ins for the commands they call (user, data directory,
statoverride, unit; purge undoes them); the packaged binary extracted from it (`--version`,
`check-config` and `serve` on the packaged configuration, answering `regcache healthcheck`); and
installed into a throwaway Debian root made by debootstrap, then purged."""
import os
import re
import shutil
import stat
import tomllib

import pytest

from e2elib.procs import ManagedProcess
from e2elib.regcache import REPO_ROOT
from e2elib.util import free_port, http_request, require_tool, run, wait_until

CONFIG = "/etc/regcache/regcache.toml"
UNIT_DIRS = ("lib/systemd/system", "usr/lib/systemd/system")


def cargo_version():
    with open(os.path.join(REPO_ROOT, "Cargo.toml"), "rb") as f:
        return tomllib.load(f)["package"]["version"]


@pytest.fixture(scope="module")
def deb(workdir):
    require_tool("dpkg-deb", "dpkg")
    res = run([os.path.join(REPO_ROOT, "scripts", "package-deb.sh")], timeout=1800, cwd=REPO_ROOT,
              log=os.path.join(workdir, "package-deb.log"))
    path = os.path.join(REPO_ROOT, res.out.strip().splitlines()[-1])
    assert path.endswith(".deb") and os.path.isfile(path), f"last line is not the package:\n{res!r}"
    return path


@pytest.fixture(scope="module")
def unpacked(deb, workdir):
    """(root, control): the package's files and its control area, each extracted into a directory."""
    d = os.path.join(workdir, "deb")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    root, control = os.path.join(d, "root"), os.path.join(d, "control")
    run(["dpkg-deb", "-x", deb, root])
    run(["dpkg-deb", "-e", deb, control])
    return root, control


def packaged_unit(root):
    found = [os.path.join(root, u, "regcache.service") for u in UNIT_DIRS
             if os.path.isfile(os.path.join(root, u, "regcache.service"))]
    assert len(found) == 1, f"one regcache.service in {UNIT_DIRS}: {found}"
    return found[0]


def test_control_fields(deb):
    fields = {}
    for line in run(["dpkg-deb", "-f", deb]).out.splitlines():
        m = re.match(r"^([A-Za-z-]+): (.*)$", line)
        if m:
            fields[m[1]] = m[2]
    assert fields["Package"] == "regcache"
    assert fields["Version"].split("-")[0] == cargo_version(), fields
    assert fields["Architecture"] == run(["dpkg", "--print-architecture"]).out.strip()
    assert "libc6" in fields.get("Depends", ""), "$auto: the shared libraries the binary links"
    assert fields.get("Maintainer") and fields.get("Section") == "net", fields
    info = run(["dpkg-deb", "-I", deb]).out
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*?\s*{script}\b", info, re.M), \
            f"no {script} in the control area:\n{info}"


def test_files_modes_and_owners(deb):
    entries = {}
    for line in run(["dpkg-deb", "-c", deb]).out.splitlines():
        mode, owner, _size, _date, _time, path = line.split(None, 5)
        owner = {"0/0": "root/root"}.get(owner, owner)
        entries[path.split(" -> ")[0].removeprefix(".")] = (mode, owner)
    assert entries["/usr/bin/regcache"] == ("-rwxr-xr-x", "root/root"), entries.get("/usr/bin/regcache")
    assert entries[CONFIG] == ("-rw-r-----", "root/root"), "group regcache by postinst's statoverride"
    units = [f"/{u}/regcache.service" for u in UNIT_DIRS if f"/{u}/regcache.service" in entries]
    assert len(units) == 1 and entries[units[0]][0] == "-rw-r--r--", units
    assert "/usr/share/doc/regcache/copyright" in entries
    assert "/usr/share/doc/regcache/examples/regcache.toml" in entries, "the annotated example"
    # the data directory is made (and owned by the user) in postinst, never shipped
    assert not [p for p in entries if p.startswith("/var/") or p.startswith("/usr/local")], sorted(entries)


def test_conffile_and_the_hardened_unit(unpacked):
    root, control = unpacked
    with open(os.path.join(control, "conffiles")) as f:
        assert f.read().split() == [CONFIG]
    with open(packaged_unit(root)) as f:
        unit = f.read()
    with open(os.path.join(REPO_ROOT, "deploy", "regcache.service")) as f:
        shipped = f.read()
    assert re.search(r"^ExecStart=/usr/bin/regcache serve --config /etc/regcache/regcache\.toml$", unit, re.M)

    def directives(text):
        return [ln for ln in text.splitlines() if ln and not ln.startswith("#") and not ln.startswith("ExecStart=")]
    assert directives(unit) == directives(shipped), "the package's unit is deploy/regcache.service"
    assert "User=regcache" in unit and "StateDirectory=regcache" in unit


STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$STUB_LOG"
case "$(basename "$0")" in
    getent) [ -e "$STUB_STATE/user" ] ;;
    useradd) touch "$STUB_STATE/user" ;;
    userdel) rm -f "$STUB_STATE/user" ;;
    dpkg-statoverride)
        case "$1" in
            --list) [ -e "$STUB_STATE/override" ] ;;
            --update) touch "$STUB_STATE/override" ;;
            --remove) rm -f "$STUB_STATE/override" ;;
        esac ;;
esac
"""
# Every command the scripts may run that changes the system: logged instead of run.
STUBBED = ["getent", "useradd", "userdel", "groupdel", "install", "dpkg-statoverride", "rm", "rmdir",
           "chown", "chmod", "chgrp", "deb-systemd-helper", "deb-systemd-invoke", "systemctl"]


def run_script(control, workdir, script, *args):
    """Run a maintainer script with every command in STUBBED logging instead; returns the log."""
    stubs = os.path.join(workdir, "deb", "stubs")
    state = os.path.join(workdir, "deb", "stub-state")
    os.makedirs(stubs, exist_ok=True)
    os.makedirs(state, exist_ok=True)
    for name in STUBBED:
        path = os.path.join(stubs, name)
        with open(path, "w") as f:
            f.write(STUB)
        os.chmod(path, 0o755)
    log = os.path.join(workdir, "deb", "stub.log")
    open(log, "w").close()
    env = {"PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin", "STUB_LOG": log, "STUB_STATE": state}
    text = open(os.path.join(control, script)).read()
    # absolute paths would get past the stand-ins
    assert not re.search(r"(^\s*|[;|&(]\s*|\b(?:then|do|else)\s+)/\S*bin/", text, re.M), \
        f"{script} calls a command by its path"
    run(["sh", "-n", os.path.join(control, script)])
    run(["sh", os.path.join(control, script), *args], env=env)
    with open(log) as f:
        return f.read().splitlines()


def test_maintainer_scripts(unpacked, workdir):
    _root, control = unpacked
    for script in ("postinst", "prerm", "postrm"):
        text = open(os.path.join(control, script)).read()
        assert "#DEBHELPER#" not in text, f"{script}: cargo-deb did not fill in the systemd part"
        assert os.stat(os.path.join(control, script)).st_mode & stat.S_IXUSR
    # cargo-deb's systemd part once each (it fills in every "#DEBHELPER#", comments' too)
    for script, line in [("postinst", "deb-systemd-helper enable regcache.service"),
                         ("postinst", "deb-systemd-invoke $_dh_action regcache.service"),
                         ("prerm", "deb-systemd-invoke stop regcache.service"),
                         ("postrm", "deb-systemd-helper purge regcache.service")]:
        assert open(os.path.join(control, script)).read().count(line) == 1, f"{script}: {line!r} once"
    shutil.rmtree(os.path.join(workdir, "deb", "stub-state"), ignore_errors=True)

    calls = run_script(control, workdir, "postinst", "configure", "")
    useradd = [c for c in calls if c.startswith("useradd ")]
    assert len(useradd) == 1 and "--system" in useradd[0] and useradd[0].endswith(" regcache"), calls
    assert "install -d -o regcache -g regcache -m 0750 /var/lib/regcache" in calls, calls
    assert f"dpkg-statoverride --update --add root regcache 0640 {CONFIG}" in calls, calls
    assert any(c.startswith("deb-systemd-helper enable regcache.service") for c in calls), calls
    # the user exists before anything may start the service
    first_systemd = min(i for i, c in enumerate(calls) if c.startswith("deb-systemd"))
    assert calls.index(useradd[0]) < first_systemd, calls

    calls = run_script(control, workdir, "postinst", "configure", "0.0.9-1")
    assert not [c for c in calls if c.startswith("useradd")], "an upgrade keeps the user"
    assert not [c for c in calls if c.startswith("dpkg-statoverride --update")], "and the override"

    # (it stops the unit only where systemd runs, /run/systemd/system)
    run_script(control, workdir, "prerm", "remove")

    calls = run_script(control, workdir, "postrm", "remove")
    assert not [c for c in calls if c.startswith(("rm ", "userdel"))], f"remove keeps data and user: {calls}"
    calls = run_script(control, workdir, "postrm", "purge")
    assert "rm -rf /var/lib/regcache" in calls, calls
    assert f"dpkg-statoverride --remove {CONFIG}" in calls, calls
    assert "userdel regcache" in calls, calls


def test_the_packaged_binary_runs_its_packaged_configuration(unpacked, workdir):
    root, _control = unpacked
    binary = os.path.join(root, "usr", "bin", "regcache")
    res = run([binary, "--version"])
    assert res.out.strip() == f"regcache {cargo_version()}", res
    res = run([binary, "check-config", os.path.join(root, CONFIG.lstrip("/"))])
    assert "/var/lib/regcache" in res.out and "registry-1.docker.io" in res.out, res
    assert "127.0.0.1:5000" in res.out, res

    # serve the packaged configuration (on a free port, data in the work dir) and ask it
    d = os.path.join(workdir, "deb", "serve")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    with open(os.path.join(root, CONFIG.lstrip("/"))) as f:
        text = f.read()
    assert text.count('listen = "127.0.0.1:5000"') == 1 and text.count('data_dir = "/var/lib/regcache"') == 1
    text = text.replace('listen = "127.0.0.1:5000"', f'listen = "127.0.0.1:{port}"')
    text = text.replace('data_dir = "/var/lib/regcache"', f'data_dir = "{d}/data"')
    config = os.path.join(d, "regcache.toml")
    with open(config, "w") as f:
        f.write(text)
    proc = ManagedProcess("deb-regcache", [binary, "serve", "--config", config], os.path.join(d, "regcache.log"))
    proc.start()
    try:
        def up():
            proc.check_alive()
            return http_request("127.0.0.1", port, "GET", "/healthz", timeout=5)[0] == 200
        wait_until(up, 30, "the packaged regcache to answer /healthz")
        res = run([binary, "healthcheck", "--config", config], timeout=30)
        assert res.rc == 0 and not res.err.strip(), res
    finally:
        proc.stop()
    res = run([binary, "healthcheck", "--config", config], timeout=30, check=False)
    assert res.rc == 1 and "connection refused" in res.err, res


def apt_source():
    """(mirror URL, suite) of the Debian archive this host's apt uses (deb822 sources first)."""
    found = []
    d = "/etc/apt/sources.list.d"
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if name.endswith(".sources"):
            with open(os.path.join(d, name)) as f:
                for stanza in f.read().split("\n\n"):
                    fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                    if "deb" in fields.get("Types", "").split() and "URIs" in fields and "Suites" in fields:
                        found.append((fields["URIs"].split()[0], fields["Suites"].split()[0]))
    if os.path.exists("/etc/apt/sources.list"):
        with open("/etc/apt/sources.list") as f:
            found += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", f.read(), re.M)
    found = [(u, s) for u, s in found if "security" not in u and not s.endswith(("-updates", "-security"))]
    assert found, "no Debian archive in this host's apt sources"
    return found[0]


def test_installs_into_a_debian_root_and_purges(deb, workdir):
    """dpkg -i into a fresh minbase root (debootstrap, the suite of this host's apt), then purge."""
    debootstrap = require_tool("debootstrap", "debootstrap")
    root = os.path.join(workdir, "deb", "debian-root")
    shutil.rmtree(root, ignore_errors=True)
    mirror, suite = apt_source()
    run([debootstrap, "--variant=minbase", suite, root, mirror], timeout=900,
        log=os.path.join(workdir, "deb", "debootstrap.log"))
    try:
        shutil.copy(deb, os.path.join(root, "tmp", "regcache.deb"))

        def inside(*cmd, check=True):
            return run(["chroot", root, *cmd], check=check, timeout=120)
        inside("dpkg", "-i", "/tmp/regcache.deb")
        user = inside("getent", "passwd", "regcache").out.strip().split(":")
        assert int(user[2]) < 1000 and user[5] == "/var/lib/regcache" and user[6] == "/usr/sbin/nologin", user
        assert inside("stat", "-c", "%U:%G %a", "/var/lib/regcache").out.split() == ["regcache:regcache", "750"]
        assert inside("stat", "-c", "%U:%G %a", CONFIG).out.split() == ["root:regcache", "640"]
        assert inside("dpkg-query", "-W", "-f", "${Status}", "regcache").out == "install ok installed"
        res = inside("runuser", "-u", "regcache", "--", "/usr/bin/regcache", "check-config", CONFIG)
        assert "/var/lib/regcache" in res.out, res
        assert inside("dpkg", "--verify", "regcache").out == "", "installed files as packaged"

        inside("dpkg", "--purge", "regcache")
        assert inside("getent", "passwd", "regcache", check=False).rc != 0, "purge removes the user"
        assert inside("getent", "group", "regcache", check=False).rc != 0, "and its group"
        for path in ("/var/lib/regcache", "/etc/regcache", "/usr/bin/regcache"):
            assert not os.path.exists(os.path.join(root, path.lstrip("/"))), f"{path} left after purge"
        assert inside("dpkg-statoverride", "--list", check=False).out.strip() == "", "purge removes the override"
    finally:
        shutil.rmtree(root, ignore_errors=True)
