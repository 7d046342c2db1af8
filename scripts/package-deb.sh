#!/usr/bin/env bash
# Builds regcache's Debian package with cargo-deb ([package.metadata.deb] in Cargo.toml; installed
# with `cargo install --locked cargo-deb` when missing) and prints the .deb's path as its last line.
# The package: /usr/bin/regcache; the hardened unit of deploy/regcache.service, running
# /usr/bin/regcache, enabled and started; /etc/regcache/regcache.toml (a conffile,
# deploy/debian/regcache.toml: a Docker Hub mirror on 127.0.0.1:5000); the system user regcache
# made by deploy/debian/postinst, owning /var/lib/regcache; a purge removes them again
# (deploy/debian/postrm).
# Install with `apt install ./target/debian/regcache_<version>-1_<arch>.deb` (or dpkg -i).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package-deb.sh: installing cargo-deb" >&2
    cargo install --locked cargo-deb >&2
fi

# The unit in deploy/ runs /usr/local/bin/regcache, where a hand installation puts it; the package's
# binary is /usr/bin/regcache. Everything else in the unit is the same.
unit_dir=target/deb-unit
mkdir -p "$unit_dir"
{
    echo "# Installed by the regcache Debian package (the install steps below are for a hand installation)."
    sed 's|^ExecStart=/usr/local/bin/regcache |ExecStart=/usr/bin/regcache |' deploy/regcache.service
} > "$unit_dir/regcache.service"
grep -q '^ExecStart=/usr/bin/regcache serve ' "$unit_dir/regcache.service" \
    || { echo "package-deb.sh: deploy/regcache.service has no ExecStart=/usr/local/bin/regcache serve line" >&2; exit 1; }

# cargo-deb prints the path of the package it made as its last line. Stripped: the release profile
# keeps line tables for profiling, which would make the package five times larger.
out=$(cargo deb --locked --strip)
deb=$(printf '%s\n' "$out" | tail -n 1)
printf '%s\n' "$out" | head -n -1 >&2
if [ ! -f "$deb" ]; then
    echo "package-deb.sh: cargo deb made no package (it said: $deb)" >&2
    exit 1
fi
echo "$deb"
