"""The key/token module: dev secrets, minting, JWKS, the claims header, ``make token``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography import x509

from services.shared import auth
from tests import auth as test_auth

ROOT = Path(__file__).resolve().parents[2]


def _verify(token: str, secrets: auth.DevSecrets, **options: object) -> dict[str, object]:
    """Verify as Envoy does: the JWKS by kid, ES256 only, iss/aud/exp enforced."""
    jwks = jwt.PyJWKSet.from_dict(json.loads(secrets.jwks_path.read_text()))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return jwt.decode(token, key.key, algorithms=["ES256"], issuer=auth.ISSUER, audience=auth.AUDIENCE,
                      options={"require": ["exp", "iat", "nbf", "sub"]}, **options)  # type: ignore[arg-type]


def test_dev_secrets_are_created_once_and_kept(tmp_path: Path) -> None:
    first = auth.ensure_dev_secrets(tmp_path / "s")
    files = {p: p.read_bytes() for p in (first.signing_key_path, first.jwks_path, first.mesh_secret_path,
                                          first.valkey_password_path, first.tls_cert_path, first.tls_key_path)}
    again = auth.ensure_dev_secrets(tmp_path / "s")
    assert {p: p.read_bytes() for p in files} == files
    assert again.kid() == first.kid()
    assert oct(first.signing_key_path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "s").stat().st_mode & 0o777) == "0o700"
    assert len(first.mesh_secret()) == 64


def test_minted_token_verifies_against_the_jwks_with_its_claims(tmp_path: Path) -> None:
    secrets = auth.ensure_dev_secrets(tmp_path)
    token = auth.mint_token("trainer", subject="alice", ttl_s=120, secrets=secrets)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == secrets.kid()
    claims = _verify(token, secrets)
    assert claims["sub"] == "alice" and claims["role"] == "trainer"
    assert 118 <= int(claims["exp"]) - int(claims["iat"]) <= 120  # type: ignore[call-overload]


def test_expired_token_fails_verification(tmp_path: Path) -> None:
    secrets = auth.ensure_dev_secrets(tmp_path)
    token = auth.mint_token("viewer", ttl_s=60, issued_at=time.time() - 3600, secrets=secrets)
    with pytest.raises(jwt.ExpiredSignatureError):
        _verify(token, secrets)


def test_token_of_another_key_fails_verification(tmp_path: Path) -> None:
    ours = auth.ensure_dev_secrets(tmp_path / "ours")
    theirs = auth.ensure_dev_secrets(tmp_path / "theirs")
    token = auth.mint_token("admin", secrets=theirs)
    with pytest.raises(StopIteration):  # unknown kid: no key to try
        _verify(token, ours)


def test_unknown_role_and_bad_ttl_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        auth.mint_token("root")
    with pytest.raises(ValueError):
        auth.parse_ttl("soon")
    with pytest.raises(ValueError):
        auth.parse_ttl("0s")
    assert auth.parse_ttl("90") == 90 and auth.parse_ttl("15m") == 900 and auth.parse_ttl("1h") == 3600
    assert auth.parse_ttl("2d") == 172800


def test_roles_are_ordered_and_service_is_above_admin() -> None:
    assert auth.role_at_least("admin", "viewer") and auth.role_at_least("trainer", "trainer")
    assert not auth.role_at_least("viewer", "trainer")
    assert not auth.role_at_least("admin", auth.SERVICE_ROLE)
    assert auth.role_at_least(auth.SERVICE_ROLE, "admin")
    assert not auth.role_at_least("superuser", "viewer") and not auth.role_at_least(None, "viewer")


def test_claims_header_round_trip_matches_the_token_payload(tmp_path: Path) -> None:
    secrets = auth.ensure_dev_secrets(tmp_path)
    token = auth.mint_token("operator", subject="bob", secrets=secrets)
    payload = token.split(".")[1]  # what Envoy's forward_payload_header carries
    claims = auth.decode_claims_header(payload)
    assert claims["sub"] == "bob" and claims["role"] == "operator"
    assert auth.decode_claims_header(auth.encode_claims_header(claims)) == claims
    principal = auth.Principal.from_claims(claims)
    assert principal.subject == "bob" and principal.at_least("trainer") and not principal.at_least("admin")
    assert principal.expires_at == claims["exp"]
    with pytest.raises(ValueError):
        auth.decode_claims_header("not json!")
    with pytest.raises(ValueError):
        auth.decode_claims_header(auth.encode_claims_header({}).replace("e30", "WzFd"))  # a list


def test_edge_certificate_names_localhost_and_loopback(tmp_path: Path) -> None:
    secrets = auth.ensure_dev_secrets(tmp_path)
    cert = x509.load_pem_x509_certificate(secrets.tls_cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_make_token_prints_only_a_verifiable_token(tmp_path: Path) -> None:
    env = {**os.environ, "AF_SECRETS_DIR": str(tmp_path / "s")}
    out = subprocess.run(["make", "-s", "--no-print-directory", "token", "ROLE=viewer", "TTL=10m", "SUB=carol"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert out.stdout.count("\n") == 1 and token.count(".") == 2
    claims = _verify(token, auth.DevSecrets(tmp_path / "s"))
    assert claims["sub"] == "carol" and claims["role"] == "viewer"
    assert int(claims["exp"]) - int(claims["iat"]) == 600  # type: ignore[call-overload]
    bad = subprocess.run([sys.executable, "-m", "services.shared.auth", "token", "--role", "root"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and not bad.stdout


def test_test_helpers_send_the_token_and_what_envoy_forwards() -> None:
    md = dict(test_auth.direct_metadata("viewer"))
    assert md[auth.MESH_IDENTITY_HEADER] == auth.mesh_secret()
    assert auth.decode_claims_header(md[auth.CLAIMS_HEADER])["role"] == "viewer"
    assert dict(test_auth.metadata("trainer"))["authorization"].startswith("Bearer ")
    assert test_auth.headers(None) == {}
