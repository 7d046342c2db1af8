"""The suite's own CA, a TLS server certificate (registry, token server, CDN)
and the token-signing certificate, all made with the openssl CLI."""
import os
import subprocess


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class PKI:
    def __init__(self, d):
        self.dir = str(d)
        self.ca_cert = os.path.join(self.dir, "ca.pem")
        self.ca_key = os.path.join(self.dir, "ca.key")
        self.server_cert = os.path.join(self.dir, "server.pem")
        self.server_key = os.path.join(self.dir, "server.key")
        self.token_cert = os.path.join(self.dir, "token.pem")
        self.token_key = os.path.join(self.dir, "token.key")
        # skopeo/containers-image wants a directory with *.crt CA files
        self.cert_dir = os.path.join(self.dir, "certs.d")

    def create(self):
        os.makedirs(self.dir, exist_ok=True)
        d = self.dir
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3",
                 "-keyout", self.ca_key, "-out", self.ca_cert, "-subj", "/CN=regcache e2e CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        self._leaf("server", "/CN=localhost",
                   ["subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost",
                    "extendedKeyUsage=serverAuth", "keyUsage=critical,digitalSignature,keyEncipherment",
                    "basicConstraints=CA:FALSE"])
        self._leaf("token", "/CN=regcache e2e token signer",
                   ["keyUsage=critical,digitalSignature", "basicConstraints=CA:FALSE"])
        os.makedirs(self.cert_dir, exist_ok=True)
        with open(self.ca_cert) as src, open(os.path.join(self.cert_dir, "ca.crt"), "w") as dst:
            dst.write(src.read())
        return self

    def issue_server_cert(self, name, cn, sans="IP:127.0.0.1,DNS:localhost"):
        """Another TLS server certificate from the suite's CA (a new serial each time):
        returns (cert path, key path) as {dir}/{name}.pem and {dir}/{name}.key."""
        self._leaf(name, f"/CN={cn}",
                   [f"subjectAltName={sans}", "extendedKeyUsage=serverAuth",
                    "keyUsage=critical,digitalSignature,keyEncipherment", "basicConstraints=CA:FALSE"])
        return os.path.join(self.dir, f"{name}.pem"), os.path.join(self.dir, f"{name}.key")

    def _leaf(self, name, subj, exts):
        d = self.dir
        key, csr, crt, ext = (os.path.join(d, f"{name}.{s}") for s in ("key", "csr", "pem", "ext"))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", subj, cwd=d)
        with open(ext, "w") as f:
            f.write("\n".join(exts) + "\n")
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca_cert, "-CAkey", self.ca_key,
                 "-CAcreateserial", "-out", crt, "-days", "3", "-sha256", "-extfile", ext, cwd=d)
