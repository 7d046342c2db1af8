"""deploy/: the systemd unit verifies and is hardened, the example configuration passes
`regcache check-config` exactly as shipped (its optional file-naming parts commented out) and, with
those parts switched on, without printing a secret; the S3 examples (AWS, a path-style endpoint) show
every `[storage]` key between them; and every client / Kubernetes example (one replica on a volume,
several replicas on a bucket) parses and points at regcache the way its routing expects.  No servers
are started."""
import base64
import json
import os
import re
import secrets
import shutil
import stat
import tomllib

import pytest

from e2elib.regcache import REPO_ROOT, regcache_bin
from e2elib.util import require_tool, run

DEPLOY = os.path.join(REPO_ROOT, "deploy")
REGISTRIES = ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]
MIRROR = "regcache.internal:5000"        # the address every client example names
EXEC_START = "/usr/local/bin/regcache serve --config /etc/regcache/regcache.toml"

# file paths of deploy/regcache.toml (commented out as shipped) the check-config test switches on
# and points at files it creates
FILE_KEYS = {
    "password_file": "/etc/regcache/dockerhub-password",
    "ca_file": "/etc/regcache/ca.pem",
    "cert": "/etc/regcache/tls/cert.pem",
    "key": "/etc/regcache/tls/key.pem",
    "htpasswd": "/etc/regcache/htpasswd",
}
# the S3 examples: AWS (virtual-hosted, credentials from the environment / IAM role) and a
# self-hosted endpoint (path style, an access key whose secret is in a file)
S3_EXAMPLES = ["regcache-s3-aws.toml", "regcache-s3-path-style.toml"]
# file paths of deploy/regcache-s3-path-style.toml (commented out as shipped)
S3_FILE_KEYS = {
    "secret_access_key_file": "/etc/regcache/s3-secret-access-key",
    "ca_file": "/etc/regcache/s3-ca.pem",
}


def read(rel):
    path = os.path.join(DEPLOY, rel)
    assert os.path.isfile(path), f"deploy/{rel} is missing"
    with open(path) as f:
        return f.read()


def load_toml(rel):
    try:
        return tomllib.loads(read(rel))
    except tomllib.TOMLDecodeError as e:
        pytest.fail(f"deploy/{rel} is not valid TOML: {e}", pytrace=False)


# a commented-out setting: "#" directly followed by a key or a [section] (explanations are "# ...")
COMMENTED_SETTING = re.compile(r"^#(?=\[|[a-z_]+ = )", re.M)


def example_with_optional_parts(rel="regcache.toml"):
    """deploy/<rel> with every commented-out setting switched on."""
    text = COMMENTED_SETTING.sub("", read(rel))
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        pytest.fail(f"deploy/{rel} with its optional parts switched on is not TOML: {e}", pytrace=False)
    return text


def storage_keys_of_the_code():
    """The keys `[storage]` takes: its tag `backend` (of `enum RawStorage` in src/config/storage.rs) and
    the fields of `RawS3` in src/config/s3.rs (deny_unknown_fields), so that a key added there and
    not shown in the examples fails the coverage test."""
    with open(os.path.join(REPO_ROOT, "src", "config", "storage.rs")) as f:
        assert re.search(r'#\[serde\(tag = "backend"', f.read()), "RawStorage is not tagged by backend"
    with open(os.path.join(REPO_ROOT, "src", "config", "s3.rs")) as f:
        m = re.search(r"struct RawS3 \{(.*?)\n\}", f.read(), re.S)
    assert m, "struct RawS3 not found in src/config/s3.rs"
    keys = {"backend"} | set(re.findall(r"^\s*(?:pub )?([a-z_]+): ", m[1], re.M))
    assert {"backend", "bucket"} <= keys, keys
    return keys


def load_yaml_docs(rel):
    try:
        import yaml
    except ImportError:
        pytest.fail("python module 'yaml' missing: run scripts/install-test-deps.sh (pip 'pyyaml')",
                    pytrace=False)
    try:
        return [d for d in yaml.safe_load_all(read(rel)) if d is not None]
    except yaml.YAMLError as e:
        pytest.fail(f"deploy/{rel} is not valid YAML: {e}", pytrace=False)


def unit_directives(text):
    """{(section, key): [values in order]} of a systemd unit (no line continuations used)."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line in the unit: {line!r}"
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


# the Kubernetes examples and the kinds each holds exactly one of
K8S_KINDS = {
    "kubernetes.yaml": ("ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"),
    "kubernetes-s3.yaml": ("ConfigMap", "Secret", "Deployment", "PodDisruptionBudget", "Service"),
}


def k8s_objects(rel="kubernetes.yaml"):
    docs = load_yaml_docs(rel)
    by_kind = {}
    for d in docs:
        assert isinstance(d, dict) and "kind" in d and "apiVersion" in d, f"not a Kubernetes object: {d!r}"
        by_kind.setdefault(d["kind"], []).append(d)
    assert set(by_kind) == set(K8S_KINDS[rel]), f"{rel} holds {sorted(by_kind)}, want {K8S_KINDS[rel]}"
    for kind in K8S_KINDS[rel]:
        assert len(by_kind.get(kind, [])) == 1, f"{rel} must hold exactly one {kind}"
    return {k: v[0] for k, v in by_kind.items()}


def k8s_regcache_toml(rel="kubernetes.yaml"):
    cm = k8s_objects(rel)["ConfigMap"]
    assert "regcache.toml" in cm.get("data", {}), "the ConfigMap must have a regcache.toml key"
    return cm["data"]["regcache.toml"]


def k8s_secret_files(secret):
    """{file name: content} a Secret volume of `secret` shows (no `items`: one file per key)."""
    files = dict(secret.get("stringData", {}))
    for k, v in secret.get("data", {}).items():
        files[k] = base64.b64decode(v).decode()
    return files


def k8s_quantity(q):
    """Bytes of a Kubernetes quantity ("20Gi", "500M", "1073741824")."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    assert m, f"unexpected quantity {q!r}"
    mult = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m[2]]
    return int(m[1]) * mult


def regcache_size(text):
    """Bytes of a regcache size ("18GiB", "500MB", "1024")."""
    m = re.fullmatch(r"(\d+)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?", text)
    assert m, f"unexpected size {text!r}"
    mult = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
            "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[m[2]]
    return int(m[1]) * mult


def dockerfile_default_config():
    """The regcache.toml the Dockerfile writes with printf '%s\\n' '<line>' ... > file."""
    m = re.search(r"printf '%s\\n'((?:\s*\\?\s*'[^']*')+)\s*\\?\s*>\s*/etc/regcache/regcache\.toml",
                  read("Dockerfile"))
    assert m, "deploy/Dockerfile must write /etc/regcache/regcache.toml with printf '%s\\n' '...'"
    return "\n".join(re.findall(r"'([^']*)'", m[1])) + "\n"


# ---------------------------------------------------------------------------------- systemd

def test_systemd_unit_is_hardened():
    d = unit_directives(read("regcache.service"))

    def one(key, section="Service"):
        vals = d.get((section, key))
        assert vals, f"regcache.service: [{section}] {key}= is missing"
        return vals[-1]

    assert one("ExecStart") == EXEC_START
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("KillSignal") == "SIGTERM"
    assert int(one("TimeoutStopSec")) == 40        # > regcache's 30 s drain
    assert one("Restart") == "on-failure"
    assert one("StateDirectory") == "regcache"
    assert one("ConfigurationDirectory") == "regcache"
    dynamic = d.get(("Service", "DynamicUser"), ["no"])[-1] == "yes"
    user = d.get(("Service", "User"), [""])[-1]
    assert dynamic or user not in ("", "root", "0"), "needs DynamicUser=yes or a dedicated User="
    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("PrivateDevices", "yes"), ("LimitNOFILE", "65536")]:
        assert one(key) == want, f"{key}={one(key)}, want {want}"
    assert one("CapabilityBoundingSet") == "", "CapabilityBoundingSet= must be empty"
    assert d.get(("Service", "AmbientCapabilities"), [""])[-1] == ""
    assert sorted(one("RestrictAddressFamilies").split()) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert "CAP_NET_BIND_SERVICE" in read("regcache.service"), \
        "the unit must say which capability to grant for ports below 1024"
    # the directories systemd manages are the ones the example configuration uses
    cfg = load_toml("regcache.toml")
    assert cfg["data_dir"] == "/var/lib/" + one("StateDirectory")
    assert EXEC_START.endswith(f"/etc/{one('ConfigurationDirectory')}/regcache.toml")


@pytest.mark.needs_regcache
def test_systemd_analyze_verify(workdir):
    sa = require_tool("systemd-analyze", "systemd")
    d = os.path.join(workdir, "deploy-systemd")
    os.makedirs(d, exist_ok=True)
    # verify insists that ExecStart's binary exists: a copy of the unit runs a copy of the binary
    binary = os.path.join(d, "regcache")
    shutil.copy2(regcache_bin(), binary)
    text = read("regcache.service")
    assert text.count("ExecStart=/usr/local/bin/regcache ") == 1
    unit = os.path.join(d, "regcache.service")
    with open(unit, "w") as f:
        f.write(text.replace("ExecStart=/usr/local/bin/regcache ", f"ExecStart={binary} "))
    res = run([sa, "verify", unit], check=False, timeout=60)
    # unknown keys and unparsable values are only warnings (exit 0): any line about the unit fails
    complaints = [ln for ln in (res.out + res.err).splitlines() if "regcache" in ln]
    assert res.rc == 0 and not complaints, f"systemd-analyze verify complains:\n{res!r}"


# ------------------------------------------------------------------------------ check-config

def test_example_config_covers_every_key():
    shipped = load_toml("regcache.toml")
    conn = {"header_timeout", "keepalive_timeout", "client_idle_timeout", "max_connections"}
    assert set(shipped) == {"listen", "data_dir", "max_size", "admin_listen", "log_format", "fills", "storage",
                            "upstream"} | conn, \
        "as shipped, the parts that name files are commented out"
    assert shipped["storage"] == {"backend": "local"}, "the [storage] keys of s3 are in the S3 examples"
    assert not {"username", "password_file", "ca_file"} & set(shipped["upstream"][0])
    assert shipped["upstream"][0]["redirect_hosts"] == []
    cfg = tomllib.loads(example_with_optional_parts())
    assert set(cfg) == {"listen", "data_dir", "max_size", "admin_listen", "log_format", "fills", "storage", "tls",
                        "access", "upstream"} | conn
    assert set(cfg["fills"]) == {"min_free", "max_temp", "unread_min_rate", "rate_window", "unread_max"}
    assert set(cfg["tls"]) == {"cert", "key"}
    assert set(cfg["access"]) == {"htpasswd", "allow", "max_failures"}
    assert all("/" in net for net in cfg["access"]["allow"])
    names = [u["name"] for u in cfg["upstream"]]
    assert names == REGISTRIES, f"upstreams {names}, want {REGISTRIES} (docker.io first)"
    assert set(cfg["upstream"][0]) == {
        "name", "url", "username", "password_file", "ca_file", "auth_hosts", "redirect_hosts", "tag_ttl",
        "stale_max", "connect_timeout", "response_timeout", "idle_timeout"}
    for u in cfg["upstream"]:
        assert u["url"].startswith("https://"), u
    text = read("regcache.toml")
    for key, path in FILE_KEYS.items():
        assert re.search(rf'^#{key} = "{re.escape(path)}"', text, re.M), f"expected #{key} = \"{path}\""
    assert "password =" in text, "the example should mention the inline password alternative"


def test_s3_examples_cover_every_storage_key():
    keys = storage_keys_of_the_code()
    shown = set()
    for rel in S3_EXAMPLES:
        shipped = load_toml(rel)
        cfg = tomllib.loads(example_with_optional_parts(rel))
        assert set(shipped) == set(cfg) == {"listen", "data_dir", "max_size", "admin_listen", "storage", "upstream"}, rel
        assert shipped["storage"]["backend"] == "s3"
        assert not shipped["listen"].startswith("127.") and not shipped["admin_listen"].startswith("127."), \
            f"{rel}: nodes behind a load balancer listen on all addresses"
        assert shipped["data_dir"] == "/var/lib/regcache"
        assert [u["name"] for u in cfg["upstream"]] == REGISTRIES, rel
        assert set(cfg["storage"]) <= keys, f"{rel}: keys the code doesn't take: {set(cfg['storage']) - keys}"
        shown |= set(cfg["storage"])
        # the optional parts: files (commented out, so that the example passes as shipped) and the
        # bucket size (documented, not switched on)
        assert "bucket_max_size" not in shipped["storage"] and "bucket_max_size" in cfg["storage"], rel
        assert re.search(r"^# .*LRU|least-recently-used eviction across all\s*(# )?nodes", read(rel), re.M), \
            f"{rel}: bucket_max_size must say it is LRU across all nodes"
    assert shown == keys, f"[storage] keys no S3 example shows: {sorted(keys - shown)}"

    aws = load_toml("regcache-s3-aws.toml")["storage"]
    assert "endpoint" not in aws and aws["path_style"] is False, "AWS: its own endpoint, virtual-hosted style"
    assert not {"access_key_id", "secret_access_key_file"} & set(tomllib.loads(example_with_optional_parts(
        "regcache-s3-aws.toml"))["storage"]), "AWS: credentials from the environment or the IAM role"
    text = read("regcache-s3-aws.toml")
    for hint in ("AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "IAM role"):
        assert hint in text, f"regcache-s3-aws.toml should explain credentials ({hint})"

    path_style = load_toml("regcache-s3-path-style.toml")["storage"]
    assert path_style["path_style"] is True and path_style["endpoint"].startswith("https://"), path_style
    assert not set(S3_FILE_KEYS) & set(path_style), "as shipped, the settings that name files are commented out"
    text = read("regcache-s3-path-style.toml")
    assert re.search(r'^#access_key_id = "', text, re.M), "access_key_id goes with secret_access_key_file"
    for key, path in S3_FILE_KEYS.items():
        assert re.search(rf'^#{key} = "{re.escape(path)}"', text, re.M), f"expected #{key} = \"{path}\""


def _openssl_self_signed(openssl, d, name):
    cert, key = os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}-key.pem")
    run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "2", "-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:regcache.internal",
         "-keyout", key, "-out", cert], timeout=60)
    return cert, key


def _bcrypt_htpasswd_line(user, password):
    try:
        import bcrypt
    except ImportError:
        pytest.fail("python module 'bcrypt' missing: run scripts/install-test-deps.sh (pip 'bcrypt')",
                    pytrace=False)
    h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{user}:$2y${h[4:]}"        # as `htpasswd -B` writes it ($2y$, same algorithm as $2b$)


def _run_check_config(path):
    res = run([regcache_bin(), "check-config", path], check=False, timeout=60,
              env=dict(os.environ, RUST_LOG="debug"))
    assert res.rc == 0, f"regcache check-config rejects {path}:\n{res!r}"
    return res


@pytest.mark.needs_regcache
def test_check_config_accepts_the_example_as_shipped():
    # no optional file is named, so this holds on a machine without any of them
    shipped = read("regcache.toml")
    for key, path in FILE_KEYS.items():
        assert path not in "".join(ln for ln in shipped.splitlines(True) if not ln.startswith("#")), \
            f"deploy/regcache.toml names {path} ({key}) outside a comment"
    res = _run_check_config(os.path.join(DEPLOY, "regcache.toml"))
    output = res.out + res.err
    for name in REGISTRIES:
        assert f"[[upstream]] {name}" in output, f"check-config doesn't show upstream {name}:\n{res!r}"
    assert "tls = none" in output and "access.htpasswd = none" in output, res
    assert "storage = local" in output, res


@pytest.mark.needs_regcache
@pytest.mark.parametrize("rel", S3_EXAMPLES)
def test_check_config_accepts_the_s3_examples_as_shipped(rel):
    shipped = read(rel)
    for key, path in S3_FILE_KEYS.items():
        assert path not in "".join(ln for ln in shipped.splitlines(True) if not ln.startswith("#")), \
            f"deploy/{rel} names {path} ({key}) outside a comment"
    res = _run_check_config(os.path.join(DEPLOY, rel))
    output = res.out + res.err
    assert "[storage] backend = s3" in output, res
    cfg = load_toml(rel)["storage"]
    assert f"bucket = {cfg['bucket']}" in output and f"path_style = {str(cfg['path_style']).lower()}" in output, res
    assert "credentials = from AWS_ACCESS_KEY_ID" in output, res
    if rel == "regcache-s3-aws.toml":
        assert "endpoint = AWS (by region)" in output and f"region = {cfg['region']}" in output, res
    else:
        assert f"endpoint = {cfg['endpoint']}" in output, res


@pytest.mark.needs_regcache
def test_check_config_accepts_s3_example_without_leaking_the_secret(workdir):
    openssl = require_tool("openssl", "openssl")
    rel = "regcache-s3-path-style.toml"
    d = os.path.join(workdir, "deploy-config-s3")
    os.makedirs(d, exist_ok=True)
    secret_key = "s3-" + secrets.token_hex(20)
    files = {"secret_access_key_file": os.path.join(d, "s3-secret-access-key")}
    with open(files["secret_access_key_file"], "w") as f:
        f.write(secret_key + "\n")
    os.chmod(files["secret_access_key_file"], stat.S_IRUSR | stat.S_IWUSR)
    files["ca_file"], _ = _openssl_self_signed(openssl, d, "s3-ca")

    text = example_with_optional_parts(rel)
    for key, path in S3_FILE_KEYS.items():
        assert text.count(f'"{path}"') == 1, f"{path} should appear once in deploy/{rel}"
        text = text.replace(f'{key} = "{path}"', f'{key} = "{files[key]}"')
    cfg_path = os.path.join(d, "regcache.toml")
    with open(cfg_path, "w") as f:
        f.write(text)
    storage = tomllib.loads(text)["storage"]
    assert (storage["secret_access_key_file"], storage["ca_file"]) == (files["secret_access_key_file"], files["ca_file"])

    res = _run_check_config(cfg_path)
    output = res.out + res.err
    assert f"access_key_id = {storage['access_key_id']}" in output and "secret_access_key = ****" in output, res
    assert "ca_file = loaded" in output and "bucket_max_size = 2199023255552 bytes" in output, res
    assert secret_key not in output and secret_key not in "".join(output.split()), \
        f"check-config printed the secret access key:\n{res!r}"


@pytest.mark.needs_regcache
@pytest.mark.parametrize("password_form", ["password_file", "inline password"])
def test_check_config_accepts_example_without_leaking_secrets(workdir, password_form):
    openssl = require_tool("openssl", "openssl")
    d = os.path.join(workdir, f"deploy-config-{password_form.replace(' ', '-')}")
    os.makedirs(d, exist_ok=True)
    upstream_password = "up-" + secrets.token_hex(12)
    client_password = "cl-" + secrets.token_hex(12)
    htpasswd_line = _bcrypt_htpasswd_line("ci", client_password)
    files = {"password_file": os.path.join(d, "dockerhub-password"), "htpasswd": os.path.join(d, "htpasswd")}
    with open(files["password_file"], "w") as f:
        f.write(upstream_password + "\n")
    with open(files["htpasswd"], "w") as f:
        f.write(htpasswd_line + "\n")
    files["ca_file"], _ = _openssl_self_signed(openssl, d, "ca")
    files["cert"], files["key"] = _openssl_self_signed(openssl, d, "tls")
    for p in files.values():
        os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)
    with open(files["key"]) as f:
        key_pem = f.read()
    key_body = "".join(ln for ln in key_pem.splitlines() if not ln.startswith("-----"))

    text = example_with_optional_parts()
    for key, path in FILE_KEYS.items():
        assert text.count(f'"{path}"') == 1, f"{path} should appear once in deploy/regcache.toml"
        text = text.replace(f'{key} = "{path}"', f'{key} = "{files[key]}"')
    text = text.replace('data_dir = "/var/lib/regcache"', f'data_dir = "{os.path.join(d, "data")}"')
    if password_form == "inline password":
        text = text.replace(f'password_file = "{files["password_file"]}"', f'password = "{upstream_password}"')
    cfg_path = os.path.join(d, "regcache.toml")
    with open(cfg_path, "w") as f:
        f.write(text)
    cfg = tomllib.loads(text)      # the rewrite kept it TOML and hit every path
    up0 = cfg["upstream"][0]
    assert (cfg["tls"]["cert"], cfg["tls"]["key"], cfg["access"]["htpasswd"], up0["ca_file"]) == \
        (files["cert"], files["key"], files["htpasswd"], files["ca_file"])
    assert up0.get("password_file", files["password_file"]) == files["password_file"]

    res = _run_check_config(cfg_path)
    output = res.out + res.err
    for name in REGISTRIES:
        assert name in output, f"check-config's effective settings don't mention upstream {name}:\n{res!r}"
    secret_bits = {"upstream password": upstream_password, "client password": client_password,
                   "htpasswd hash": htpasswd_line.split(":", 1)[1],
                   "bcrypt salt+hash": htpasswd_line[-53:], "TLS private key": key_body[40:100]}
    squeezed = "".join(output.split())      # PEM text may be printed wrapped
    leaked = [what for what, s in secret_bits.items() if s in output or s in squeezed]
    assert not leaked, f"check-config printed secrets ({', '.join(leaked)}):\n{res!r}"


@pytest.mark.needs_regcache
@pytest.mark.parametrize("source", ["kubernetes.yaml ConfigMap", "Dockerfile default"])
def test_check_config_accepts_embedded_configs(workdir, source):
    text = k8s_regcache_toml() if source.startswith("kubernetes") else dockerfile_default_config()
    tomllib.loads(text)
    path = os.path.join(workdir, f"deploy-embedded-{source.split()[0]}.toml")
    with open(path, "w") as f:
        f.write(text)
    _run_check_config(path)


@pytest.mark.needs_regcache
def test_check_config_accepts_the_kubernetes_s3_config_with_its_secret(workdir):
    """The ConfigMap's regcache.toml, its secret_access_key_file being the Secret's file as the pod
    sees it (here holding a fresh secret): accepted, and the secret never printed."""
    objs = k8s_objects("kubernetes-s3.yaml")
    text = k8s_regcache_toml("kubernetes-s3.yaml")
    secret_path = tomllib.loads(text)["storage"]["secret_access_key_file"]
    mount, name = _secret_mount(objs, secret_path)
    placeholder = k8s_secret_files(objs["Secret"])[name]
    d = os.path.join(workdir, "deploy-embedded-kubernetes-s3")
    os.makedirs(os.path.join(d, "secrets"), exist_ok=True)
    secret_key = "k8s-" + secrets.token_hex(20)
    for value, label in [(placeholder, "placeholder"), (secret_key, "fresh")]:
        with open(os.path.join(d, "secrets", name), "w") as f:
            f.write(value)
        assert text.count(f'"{secret_path}"') == 1
        path = os.path.join(d, f"regcache-{label}.toml")
        with open(path, "w") as f:
            f.write(text.replace(f'"{secret_path}"', f'"{os.path.join(d, "secrets", name)}"'))
        res = _run_check_config(path)
        output = res.out + res.err
        assert "[storage] backend = s3" in output and "secret_access_key = ****" in output, res
        assert value not in output, f"check-config printed the Secret's value ({label}):\n{res!r}"


# ------------------------------------------------------------------------ client examples

def test_docker_daemon_json():
    try:
        cfg = json.loads(read("docker-daemon.json"))
    except json.JSONDecodeError as e:
        pytest.fail(f"deploy/docker-daemon.json is not valid JSON: {e}", pytrace=False)
    assert cfg.get("registry-mirrors") == [f"http://{MIRROR}"], cfg


@pytest.mark.parametrize("registry", REGISTRIES)
def test_containerd_hosts_toml(registry):
    cfg = load_toml(f"containerd/certs.d/{registry}/hosts.toml")
    want_server = "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"
    assert cfg.get("server") == want_server
    hosts = cfg.get("host", {})
    assert list(hosts) == [f"http://{MIRROR}"], f"hosts.toml must name regcache only: {list(hosts)}"
    assert hosts[f"http://{MIRROR}"].get("capabilities") == ["pull", "resolve"]


def test_registries_conf():
    cfg = load_toml("registries.conf")
    regs = {r["prefix"]: r for r in cfg.get("registry", [])}
    assert sorted(regs) == sorted(REGISTRIES), f"registries.conf prefixes: {sorted(regs)}"
    for name, r in regs.items():
        assert r.get("location") == name
        mirrors = r.get("mirror", [])
        want = MIRROR if name == "docker.io" else f"{MIRROR}/{name}"   # path-prefix routing
        assert [m.get("location") for m in mirrors] == [want], f"{name}: mirrors {mirrors}"
        assert mirrors[0].get("insecure") is True, f"{name}: regcache is plain HTTP here, needs insecure = true"


# ---------------------------------------------------------------------- Kubernetes, Docker

def check_k8s_pod(rel):
    """What every Kubernetes example must get right: listening in the pod, /healthz probes on the admin
    port, the non-root read-only security context, the ConfigMap mounted as /etc/regcache, the Service
    selecting the pods.  Returns (objects, regcache.toml, Deployment, container, volume of each mount path)."""
    objs = k8s_objects(rel)
    cfg = tomllib.loads(k8s_regcache_toml(rel))
    listen_port = int(cfg["listen"].rsplit(":", 1)[1])
    admin_port = int(cfg.get("admin_listen", cfg["listen"]).rsplit(":", 1)[1])
    assert not cfg["listen"].startswith("127.") and not cfg.get("admin_listen", "").startswith("127."), \
        "in a pod regcache must listen on all addresses"
    assert [u["name"] for u in cfg["upstream"]] == REGISTRIES

    dep = objs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod.get("terminationGracePeriodSeconds", 30) > 30
    [c] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert listen_port in ports.values() and admin_port in ports.values()
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        port = ports.get(get["port"], get["port"])
        assert get["path"] == "/healthz" and port == admin_port, f"{probe}: {get}"
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True
    assert (csc.get("runAsUser") or psc.get("runAsUser", 0)) != 0
    assert csc.get("readOnlyRootFilesystem") is True
    assert csc.get("allowPrivilegeEscalation") is False
    assert "ALL" in csc.get("capabilities", {}).get("drop", [])

    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert set(mounts.values()) <= set(vols), f"{rel}: mounts of volumes that don't exist"
    assert vols[mounts["/etc/regcache"]]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    assert cfg["data_dir"] in mounts, f"{rel}: data_dir {cfg['data_dir']} is not a volume"

    svc = objs["Service"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    targets = {ports.get(p.get("targetPort"), p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]}
    assert listen_port in targets
    return objs, cfg, dep, c, {path: vols[name] for path, name in mounts.items()}


def _secret_mount(objs, path):
    """(mount path, key) under which the Deployment shows the Secret's file `path`."""
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    vols = {v["name"]: v for v in pod["volumes"]}
    for m in c["volumeMounts"]:
        vol = vols[m["name"]]
        if "secret" in vol and os.path.dirname(path) == m["mountPath"].rstrip("/"):
            assert vol["secret"]["secretName"] == objs["Secret"]["metadata"]["name"], vol
            assert "items" not in vol["secret"], "one file per key: keep the mount simple"
            assert m.get("readOnly") is True
            return m["mountPath"], os.path.basename(path)
    pytest.fail(f"{path} is not in a mounted Secret volume", pytrace=False)


def test_kubernetes_manifest():
    objs, cfg, dep, _c, volume_at = check_k8s_pod("kubernetes.yaml")
    # the sled index locks the data directory: one pod, the old one gone before the new one starts
    assert dep["spec"].get("replicas", 1) == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert volume_at[cfg["data_dir"]]["persistentVolumeClaim"]["claimName"] == \
        objs["PersistentVolumeClaim"]["metadata"]["name"]


def test_kubernetes_s3_manifest():
    objs, cfg, dep, c, volume_at = check_k8s_pod("kubernetes-s3.yaml")
    storage = cfg["storage"]
    assert storage["backend"] == "s3" and storage["bucket"], storage
    # several replicas, each with its own hot tier, all on the bucket
    assert dep["spec"]["replicas"] >= 2, "the point of this variant: several replicas"
    assert dep["spec"].get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate", \
        "nothing is shared between pods but the bucket: they can be replaced one at a time"
    hot = volume_at[cfg["data_dir"]]
    assert "emptyDir" in hot or "ephemeral" in hot, f"the hot tier is per pod (emptyDir or ephemeral): {hot}"
    assert "persistentVolumeClaim" not in hot
    if "emptyDir" in hot:
        limit = k8s_quantity(hot["emptyDir"]["sizeLimit"])
    else:
        limit = k8s_quantity(hot["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"])
    max_size = regcache_size(cfg["max_size"])
    assert max_size < limit <= max_size * 1.25, \
        f"max_size {cfg['max_size']} must be just below the hot tier's size {limit} (a full emptyDir evicts the pod)"
    if "emptyDir" in hot:
        requested = k8s_quantity(c["resources"]["requests"]["ephemeral-storage"])
        assert requested >= limit, "request the hot tier's ephemeral storage, so pods go where it fits"

    # the secret access key: a file from the Secret, the access key id beside it in the ConfigMap
    assert storage["access_key_id"], storage
    _mount, name = _secret_mount(objs, storage["secret_access_key_file"])
    files = k8s_secret_files(objs["Secret"])
    assert name in files, f"the Secret has no key {name}: {sorted(files)}"
    assert files[name] not in k8s_regcache_toml("kubernetes-s3.yaml")
    assert objs["Secret"].get("type", "Opaque") == "Opaque"

    pdb = objs["PodDisruptionBudget"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable", 0) < dep["spec"]["replicas"]
    text = read("kubernetes-s3.yaml")
    assert "kubectl create secret generic" in text and "IRSA" in text, \
        "the header should say how to create the Secret, and what to do on AWS instead"


def test_dockerfile():
    text = read("Dockerfile")
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert len(froms) == 2 and froms[0][0] == "rust:1-bookworm" and froms[1][0] == "debian:bookworm-slim", froms
    build, final = text.split("\nFROM debian:bookworm-slim", 1)
    assert "cargo build --release --locked" in build
    assert "ca-certificates" in final and f"--from={froms[0][1]}" in final
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    assert re.search(r"^VOLUME\s+\[?\"?/var/lib/regcache", final, re.M)
    assert re.search(r"^EXPOSE\s+5000\b", final, re.M)
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", final, re.M)
    assert m, "ENTRYPOINT must be in exec (JSON) form"
    entry = json.loads(m[1])
    assert os.path.basename(entry[0]) == "regcache" and entry[1:] == ["serve", "--config", "/etc/regcache/regcache.toml"]
    m = re.search(r"^HEALTHCHECK\s[^\n]*?(?:\\\n[^\n]*?)*CMD\s+(\[.*\])\s*$", final, re.M)
    assert m, "HEALTHCHECK must run `regcache healthcheck` in exec (JSON) form"
    check = json.loads(m[1])
    assert check == [entry[0], "healthcheck", "--config", "/etc/regcache/regcache.toml"], check


def test_readme_mentions_every_file():
    readme = read("README.md")
    for root, _dirs, files in os.walk(DEPLOY):
        for fn in files:
            rel = os.path.relpath(os.path.join(root, fn), DEPLOY)
            if rel == "README.md" or rel.startswith("containerd/"):
                continue
            assert fn in readme, f"deploy/README.md doesn't say what {rel} is for"
    assert "hosts.toml" in readme
