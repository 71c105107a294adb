"""`make up` prints the dashboard's address with a development sign-in in the fragment."""

from __future__ import annotations

import jwt

from services.launcher.__main__ import DASHBOARD_TOKEN_TTL_S, dashboard_url
from services.shared.auth import audience, ensure_dev_secrets, issuer


def test_loopback_edge_gets_a_signed_admin_token_in_the_fragment() -> None:
    url = dashboard_url("http://127.0.0.1:8080")
    base, _, token = url.partition("/#token=")
    assert base == "http://127.0.0.1:8080" and token
    keys = jwt.PyJWKSet.from_json(ensure_dev_secrets().jwks_path.read_text())
    key = next(k for k in keys.keys if k.key_id == jwt.get_unverified_header(token)["kid"])
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=audience(), issuer=issuer())
    assert claims["role"] == "admin" and claims["sub"] == "dashboard-dev"
    assert abs((claims["exp"] - claims["iat"]) - DASHBOARD_TOKEN_TTL_S) <= 5


def test_no_token_for_an_edge_that_is_not_loopback() -> None:
    assert dashboard_url("http://0.0.0.0:8080") == ""
    assert dashboard_url("http://10.1.2.3:8080") == ""
