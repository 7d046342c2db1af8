"""`[storage] backend = "s3"` against a real SeaweedFS: `regcache serve` probes the bucket at
start (list, write, read back, delete) and starts; a bucket it can't use stops it with exit
status 2 and one line naming the problem, the secret never printed."""
import os
import subprocess

from e2elib.procs import ManagedProcess
from e2elib.regcache import regcache_bin
from e2elib.s3 import SECRET_KEY
from e2elib.util import free_port, http_request, wait_until


def write_config(workdir, name, weed, bucket, secret, **storage):
    d = os.path.join(workdir, name)
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    secret_file = os.path.join(d, "s3-secret")
    with open(secret_file, "w") as f:
        f.write(secret + "\n")
    port = free_port()
    config = os.path.join(d, "regcache.toml")
    with open(config, "w") as f:
        # the upstream is never contacted by these tests
        f.write(f'listen = "127.0.0.1:{port}"\ndata_dir = "{os.path.join(d, "data")}"\n'
                f'[[upstream]]\nname = "docker.io"\nurl = "http://127.0.0.1:9"\n'
                + weed.storage_toml(bucket, secret_file, prefix="e2e/" + name, **storage))
    return config, port


def serve_until_up(workdir, name, config, port):
    log = os.path.join(workdir, name, "regcache.log")
    rc = ManagedProcess(f"regcache-{name}", [regcache_bin(), "serve", "--config", config], log)
    rc.start()
    try:
        def up():
            rc.check_alive()
            return http_request("127.0.0.1", port, "GET", "/healthz", timeout=5)[0] == 200
        wait_until(up, 60, f"regcache with the s3 backend on 127.0.0.1:{port}")
        text = open(log).read()
        assert "bucket probe passed" in text, text
        assert SECRET_KEY not in text
    finally:
        rc.stop()


def test_serve_with_a_usable_bucket_starts(workdir, seaweedfs):
    config, port = write_config(workdir, "s3-ok", seaweedfs, "regcache", SECRET_KEY)
    check = subprocess.run([regcache_bin(), "check-config", config], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "backend = s3" in check.stdout and "secret_access_key = ********" in check.stdout, check.stdout
    assert SECRET_KEY not in check.stdout + check.stderr
    serve_until_up(workdir, "s3-ok", config, port)


def test_an_https_endpoint_is_trusted_through_ca_file(workdir, seaweedfs, pki):
    config, port = write_config(workdir, "s3-https", seaweedfs, "regcache", SECRET_KEY, https=True,
                                ca_file=pki.ca_cert)
    serve_until_up(workdir, "s3-https", config, port)
    config, _ = write_config(workdir, "s3-https-noca", seaweedfs, "regcache", SECRET_KEY, https=True)
    out = subprocess.run([regcache_bin(), "serve", "--config", config], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "certificate" in lines[0].lower(), out.stderr


def test_serve_with_an_unusable_bucket_exits_2_with_one_line(workdir, seaweedfs):
    cases = [
        ("s3-nobucket", "no-such-bucket", SECRET_KEY, "NoSuchBucket"),
        ("s3-badsecret", "regcache", "not-the-secret-0123456789", "SignatureDoesNotMatch"),
    ]
    for name, bucket, secret, want in cases:
        config, _ = write_config(workdir, name, seaweedfs, bucket, secret)
        out = subprocess.run([regcache_bin(), "serve", "--config", config],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, f"{name}: rc={out.returncode} {out.stderr}"
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, f"{name}: one line: {out.stderr}"
        assert want in lines[0] and f'"{bucket}"' in lines[0] and seaweedfs.endpoint in lines[0], lines[0]
        assert secret not in out.stderr + out.stdout
