"""Tokens, keys and the mesh identity: the one auth module of the shared runtime.

Who does what (see docs/security.md):

* **Envoy** verifies the caller's JWT (``authorization: Bearer <token>``, ES256, RFC 7519)
  against the local JWKS (RFC 7517), with issuer, audience, ``exp`` and ``nbf`` enforced
  and :data:`CLOCK_SKEW_S` of leeway. It forwards the verified payload to the service in
  :data:`CLAIMS_HEADER` (base64url JSON, Envoy's ``forward_payload_header``) and adds the
  per-mesh secret in :data:`MESH_IDENTITY_HEADER`.
* **Services** accept only calls carrying that secret and check the role named in the
  claims against the method's ``(agentforge.common.v1.access)`` option
  (:mod:`services.shared.authz`).

Development secrets live in one directory (:func:`secrets_dir`: ``$AF_SECRETS_DIR`` or
``<repo>/.secrets``, never committed), created on first use by
:func:`ensure_dev_secrets`:

==========================  =============================================================
``jwt-signing-key.pem``     ES256 (P-256) private key, PKCS#8 PEM; signs tokens
``jwks.json``               the public keys Envoy trusts (``kid`` = RFC 7638 thumbprint)
``mesh-secret``             64 hex chars; Envoy sends it, services require it
``valkey-password``         password of the ``agentforge`` ACL user of a deployed Valkey
``tls/edge.crt|edge.key``   self-signed certificate of the edge (localhost, 127.0.0.1, ::1)
==========================  =============================================================

Minting: ``mint_token("viewer", subject="alice", ttl_s=3600)``, or from a shell
``make token ROLE=viewer TTL=1h`` (``python -m services.shared.auth token ...``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets as _secrets
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm

__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "CLAIMS_HEADER",
    "CLOCK_SKEW_S",
    "DevSecrets",
    "ISSUER",
    "MESH_IDENTITY_HEADER",
    "Principal",
    "ROLES",
    "SERVICE_ROLE",
    "decode_claims_header",
    "encode_claims_header",
    "ensure_dev_secrets",
    "issuer",
    "audience",
    "mesh_secret",
    "mint_token",
    "parse_ttl",
    "role_at_least",
    "secrets_dir",
    "service_claims",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: JWS algorithm of every token (ECDSA P-256 with SHA-256, RFC 7518 §3.4).
ALGORITHM = "ES256"
#: Default ``iss`` / ``aud`` (overridable with ``AF_JWT_ISSUER`` / ``AF_JWT_AUDIENCE``).
ISSUER = "agentforge-dev"
AUDIENCE = "agentforge"
#: Leeway, in seconds, on ``exp`` and ``nbf`` (Envoy's ``clock_skew_seconds``).
CLOCK_SKEW_S = 30

#: Header carrying the verified JWT payload from Envoy to a service (base64url JSON).
CLAIMS_HEADER = "x-af-claims"
#: Header carrying the per-mesh secret Envoy (or a service calling a peer) adds.
MESH_IDENTITY_HEADER = "x-af-mesh-identity"

#: The user roles, weakest first: each has every permission of the ones before it.
ROLES: tuple[str, ...] = ("viewer", "trainer", "operator", "admin")
#: The role of the services themselves (service-to-service calls, never in a user token):
#: everything an admin may do, plus publishing to the service-owned topics.
SERVICE_ROLE = "service"
_RANK = {**{role: i + 1 for i, role in enumerate(ROLES)}, SERVICE_ROLE: len(ROLES) + 1}


def role_at_least(role: str | None, minimum: str) -> bool:
    """True when ``role`` has every permission of ``minimum`` (unknown roles have none)."""
    return _RANK.get(role or "", 0) >= _RANK[minimum]


def issuer() -> str:
    return os.environ.get("AF_JWT_ISSUER") or ISSUER


def audience() -> str:
    return os.environ.get("AF_JWT_AUDIENCE") or AUDIENCE


# -- the secrets directory -------------------------------------------------------------


def secrets_dir() -> Path:
    """``$AF_SECRETS_DIR`` or ``<repo>/.secrets`` (gitignored)."""
    override = os.environ.get("AF_SECRETS_DIR", "").strip()
    return Path(override).resolve() if override else REPO_ROOT / ".secrets"


@dataclass(frozen=True)
class DevSecrets:
    """Paths of one secrets directory (see the module docstring) and readers."""

    directory: Path

    @property
    def signing_key_path(self) -> Path:
        return self.directory / "jwt-signing-key.pem"

    @property
    def jwks_path(self) -> Path:
        return self.directory / "jwks.json"

    @property
    def mesh_secret_path(self) -> Path:
        return self.directory / "mesh-secret"

    @property
    def valkey_password_path(self) -> Path:
        return self.directory / "valkey-password"

    @property
    def tls_cert_path(self) -> Path:
        return self.directory / "tls" / "edge.crt"

    @property
    def tls_key_path(self) -> Path:
        return self.directory / "tls" / "edge.key"

    def signing_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.signing_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.signing_key_path}: not an EC private key")
        return key

    def kid(self) -> str:
        return jwk_thumbprint(self.signing_key().public_key())

    def mesh_secret(self) -> str:
        return self.mesh_secret_path.read_text().strip()

    def valkey_password(self) -> str:
        return self.valkey_password_path.read_text().strip()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public key as a JWK (RFC 7517) with ``kid``, ``alg`` and ``use``."""
    jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    return {"kty": "EC", "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"],
            "kid": jwk_thumbprint(public_key), "alg": ALGORITHM, "use": "sig"}


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) — the key's ``kid``."""
    jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    canonical = json.dumps({"crv": jwk["crv"], "kty": "EC", "x": jwk["x"], "y": jwk["y"]},
                           separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the directory, so concurrent first uses create one set."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _self_signed(key: ec.EllipticCurvePrivateKey, days: int = 365) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentforge local edge")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, crl_sign=False, encipher_only=False,
            decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_dev_secrets(directory: str | os.PathLike[str] | None = None) -> DevSecrets:
    """Create whatever is missing in the secrets directory; return its paths.

    Idempotent and safe to call from several processes at once (a file lock); existing
    files are never replaced, so tokens already minted stay valid.
    """
    root = Path(directory) if directory is not None else secrets_dir()
    found = DevSecrets(root)
    paths = (found.signing_key_path, found.jwks_path, found.mesh_secret_path,
             found.valkey_password_path, found.tls_cert_path, found.tls_key_path)
    if all(p.exists() for p in paths):
        return found
    with _locked(root):
        os.chmod(root, 0o700)
        if not found.signing_key_path.exists():
            _write_private(found.signing_key_path, _pem(ec.generate_private_key(ec.SECP256R1())))
        if not found.jwks_path.exists():
            jwks = {"keys": [public_jwk(found.signing_key().public_key())]}
            _write_private(found.jwks_path, json.dumps(jwks, indent=2).encode() + b"\n")
            os.chmod(found.jwks_path, 0o644)  # public keys: Envoy may run as another user
        if not found.mesh_secret_path.exists():
            _write_private(found.mesh_secret_path, _secrets.token_hex(32).encode() + b"\n")
        if not found.valkey_password_path.exists():
            _write_private(found.valkey_password_path, _secrets.token_urlsafe(24).encode() + b"\n")
        if not (found.tls_cert_path.exists() and found.tls_key_path.exists()):
            tls_key = ec.generate_private_key(ec.SECP256R1())
            _write_private(found.tls_key_path, _pem(tls_key))
            _write_private(found.tls_cert_path, _self_signed(tls_key))
            os.chmod(found.tls_cert_path, 0o644)
    return found


_mesh_secrets: dict[tuple[str, Path], str] = {}


def mesh_secret() -> str:
    """The mesh secret: ``$AF_MESH_SECRET``, else the secrets directory's (created if missing).

    Read once per process and source (rotating it means restarting the mesh).
    """
    value = os.environ.get("AF_MESH_SECRET", "").strip()
    if value:
        return value
    key = ("", secrets_dir())
    if key not in _mesh_secrets:
        _mesh_secrets[key] = ensure_dev_secrets(key[1]).mesh_secret()
    return _mesh_secrets[key]


# -- tokens ----------------------------------------------------------------------------


_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str | float | int) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` → seconds (> 0)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = _TTL.match(text)
        if not match:
            raise ValueError(f"TTL {text!r}: expected a number with an optional unit s, m, h or d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"TTL must be positive, not {text!r}")
    return seconds


def mint_token(
    role: str,
    *,
    subject: str | None = None,
    ttl_s: float = 3600.0,
    not_before: float | None = None,
    issued_at: float | None = None,
    secrets: DevSecrets | None = None,
    iss: str | None = None,
    aud: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A signed ES256 token for ``role`` (one of :data:`ROLES`).

    Claims: ``iss``, ``aud``, ``sub`` (default ``dev-<role>``), ``role``, ``iat``,
    ``nbf`` (default ``iat``), ``exp`` (``iat + ttl_s``), ``jti`` (a random UUID, for
    revocation). ``extra`` adds or overrides claims (tests use it for bad tokens).
    Raises ValueError for an unknown role or a non-positive TTL.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    found = secrets or ensure_dev_secrets()
    now = time.time() if issued_at is None else issued_at
    claims: dict[str, Any] = {
        "iss": iss or issuer(),
        "aud": aud or audience(),
        "sub": subject or f"dev-{role}",
        "role": role,
        "iat": int(now),
        "nbf": int(now if not_before is None else not_before),
        "exp": int(now + ttl_s),
        "jti": uuid.uuid4().hex,
    }
    claims.update(extra or {})
    key = found.signing_key()
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": jwk_thumbprint(key.public_key())})


def encode_claims_header(claims: Mapping[str, Any]) -> str:
    """Claims as Envoy forwards them: base64url (no padding) of the JSON payload."""
    return _b64url(json.dumps(dict(claims), separators=(",", ":")).encode())


def decode_claims_header(value: str) -> dict[str, Any]:
    """The inverse of :func:`encode_claims_header`; ValueError when it is not JSON object."""
    padded = value + "=" * (-len(value) % 4)
    try:
        doc = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError) as exc:
        raise ValueError("claims header is not base64url JSON") from exc
    if not isinstance(doc, dict):
        raise ValueError("claims header is not a JSON object")
    return doc


@dataclass(frozen=True)
class Principal:
    """Who is calling, from verified claims: subject, role, expiry (epoch seconds)."""

    subject: str
    role: str
    expires_at: float | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        exp = claims.get("exp")
        return cls(
            subject=str(claims.get("sub") or ""),
            role=str(claims.get("role") or ""),
            expires_at=float(exp) if isinstance(exp, (int, float)) else None,
            claims=dict(claims),
        )

    def at_least(self, minimum: str) -> bool:
        return role_at_least(self.role, minimum)

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE


def service_claims(service: str) -> dict[str, Any]:
    """Claims a service sends for its own calls to a peer (no user behind them)."""
    return {"iss": issuer(), "sub": f"services/{service}", "role": SERVICE_ROLE}


# -- command line ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.shared.auth",
                                     description="Development keys and tokens (make token).")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="print a signed token for a role on stdout")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    token.add_argument("--sub", default=None, help="subject (default dev-<role>)")
    sub.add_parser("init", help="create the secrets directory's missing files; print its path")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            print(ensure_dev_secrets().directory)
            return 0
        print(mint_token(args.role, subject=args.sub, ttl_s=parse_ttl(args.ttl)))
    except ValueError as exc:
        print(f"auth: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
