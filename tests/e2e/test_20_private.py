"""The private repository: only regcache holds the credentials."""
import pytest

from e2elib import upstream as U

pytestmark = pytest.mark.needs_regcache


def test_regcache_used_its_credentials_for_private_repo(upstream, target, catalog):
    """After the matrix pulled private/app through regcache: the token server saw
    regcache's account (Basic ci:...) ask for, and get, pull on private/app."""
    reqs = U.token_requests(upstream.token_log)
    mine = [r for r in reqs if r.get("account") == U.REGCACHE_USER
            and any(g["name"] == "private/app" and "pull" in g["actions"] for g in r.get("granted", []))]
    assert mine, ("no token request with regcache's credentials granted pull on private/app; "
                  "token requests for private/app:\n" +
                  "\n".join(str(r) for r in reqs if any("private/app" in s for s in r.get("scopes", []))))

