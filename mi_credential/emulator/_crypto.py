"""Keys, certificates and JWTs for the emulator, with PyJWT and cryptography."""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TlsMaterial:
    """A CA and a server certificate it signed (PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    thumbprint: str
    """SHA-1 of the server certificate's DER, 40 lower-case hex digits (Service Fabric's pin)."""


@functools.lru_cache(maxsize=1)
def signing_key() -> rsa.RSAPrivateKey:
    """The RSA key tokens are signed with (one per process: key generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.lru_cache(maxsize=8)
def tls_material(dns_names: tuple[str, ...] = ("localhost",)) -> TlsMaterial:
    """A CA and a server certificate it signed for ``dns_names``, 127.0.0.1 and ::1, valid for
    ten years (one per set of names per process: key generation is slow)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mi-credential emulator CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in dns_names]
                + [
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.IPAddress(ipaddress.IPv6Address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return TlsMaterial(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        thumbprint=hashlib.sha1(der).hexdigest(),  # noqa: S324 - Service Fabric's pin is SHA-1
    )


def key_id() -> str:
    """The ``kid`` of the signing key: a digest of its public key."""
    public = (
        signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return hashlib.sha256(public).hexdigest()[:16]


def public_key_pem() -> bytes:
    return (
        signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def jwks() -> dict[str, Any]:
    """The signing key as a JSON Web Key Set."""
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(
        signing_key().public_key(), as_dict=True
    )
    jwk.update({"kid": key_id(), "use": "sig", "alg": "RS256"})
    return {"keys": [jwk]}


def mint(claims: dict[str, Any]) -> str:
    """Sign ``claims`` as an RS256 JWT (with a unique ``uti``)."""
    payload = {"uti": uuid.uuid4().hex, **claims}
    return jwt.encode(payload, signing_key(), algorithm="RS256", headers={"kid": key_id()})


def verify(token: str, *, audience: str | list[str] | None, now: float) -> dict[str, Any]:
    """Check a JWT the emulator minted: signature, audience, ``nbf``/``exp`` against ``now``.

    Raises:
        jwt.InvalidTokenError: It fails a check.
    """
    claims: dict[str, Any] = jwt.decode(
        token,
        signing_key().public_key(),
        algorithms=["RS256"],
        audience=audience,
        options={
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": audience is not None,
        },
    )
    if claims.get("nbf", 0) > now + 300:
        raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")
    if claims.get("exp", 0) <= now:
        raise jwt.ExpiredSignatureError("Signature has expired")
    return claims
