"""The federation's PKI: a private CA, one TLS certificate per role, and each client's Ed25519 signing identity.

Shared by every networked driver (gRPC services: mutual TLS; Flower: signing identities for signed masking).

Identity invariant: a peer's role is the common name of the certificate it proved possession of during the TLS
handshake (``aggregator``, ``keyholder`` or ``client-<id>``); the same name is the certificate's DNS SAN. Nothing
in a message body can change who the sender is. Server certificates also carry ``localhost``/``127.0.0.1`` SANs,
but channels verify the server by its role name (``ssl_target_name_override``), so a client certificate can never
stand in for the aggregator or the key holder.

Clients also get a *signing identity*: an Ed25519 key and a CA-issued certificate for it (``client-<id>.sign.pem``,
key usage: digital signature only). Masking clients sign their key advertisements and consistency responses with
it; the untrusted aggregator relays the certificates (tasks name them by SHA-256 :func:`fingerprint`; clients
keep the ones they verified, see :mod:`training.services.pki.peers`), and every party checks each one against the CA and the id it is
used for (:func:`verify_signing_identity`), so an aggregator cannot substitute keys between clients.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pathlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secagg.errors import AuthenticationError
from secagg.roles import AGGREGATOR, KEYHOLDER

__all__ = ["init_certs", "issue", "role_name", "parse_identity", "Credentials",
           "verify_signing_cert", "verify_signing_identity", "SigningIdentity", "fingerprint"]

_CLIENT_RE = re.compile(r"client-(0|[1-9][0-9]{0,8})")
_SERVERS = {"aggregator": AGGREGATOR, "keyholder": KEYHOLDER}
_VALIDITY = dt.timedelta(days=365)


def role_name(identity: int) -> str:
    """The certificate name of a role address: ``aggregator``, ``keyholder`` or ``client-<id>``."""
    for name, addr in _SERVERS.items():
        if identity == addr:
            return name
    if identity < 0:
        raise ValueError(f"no role has address {identity}")
    return f"client-{identity}"


def parse_identity(name: str) -> int:
    """Inverse of :func:`role_name`; any other name raises AuthenticationError."""
    if name in _SERVERS:
        return _SERVERS[name]
    m = _CLIENT_RE.fullmatch(name)
    if m is None:
        raise AuthenticationError(f"certificate name {name!r} is not a secagg role")
    return int(m.group(1))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secagg"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: pathlib.Path, data: bytes, secret: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _make_ca(directory: pathlib.Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("secagg-ca")).issuer_name(_name("secagg-ca"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(directory / "ca.key", _pem_key(key), secret=True)
    _write(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _load_ca(directory: pathlib.Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("CA key is not an EC key")
    return key, cert


def _certificate(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str, public_key,
                 sans: list[x509.GeneralName], usages: list, key_usage: x509.KeyUsage | None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + _VALIDITY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.SubjectAlternativeName(sans), critical=False))
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(ca_key, hashes.SHA256())


_SIGN_ONLY = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                           encipher_only=False, decipher_only=False)


def issue(directory: str | os.PathLike, identity: int) -> None:
    """Issue ``<role>.pem``/``<role>.key`` for ``identity`` signed by the CA in ``directory`` (and, for a client or
    the key holder, its signing identity ``<role>.sign.pem``/``<role>.sign.key``)."""
    d = pathlib.Path(directory)
    ca_key, ca_cert = _load_ca(d)
    name = role_name(identity)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity < 0:
        sans += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = _certificate(ca_key, ca_cert, name, key.public_key(), sans, usages, None)
    _write(d / f"{name}.key", _pem_key(key), secret=True)
    _write(d / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    if identity >= 0 or identity == KEYHOLDER:  # the key holder signs its public bundle (Flower driver)
        skey = ed25519.Ed25519PrivateKey.generate()
        scert = _certificate(ca_key, ca_cert, name, skey.public_key(), [x509.DNSName(name)], [], _SIGN_ONLY)
        _write(d / f"{name}.sign.key", skey.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()), secret=True)
        _write(d / f"{name}.sign.pem", scert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class SigningIdentity:
    """A client's signing certificate after :func:`verify_signing_identity`: its PEM, Ed25519 key, SHA-256
    fingerprint (hex, of the DER encoding) and the end of its validity."""

    identity: int
    pem: str
    key: ed25519.Ed25519PublicKey
    fingerprint: str
    not_after: dt.datetime

    def valid_now(self) -> bool:
        return dt.datetime.now(dt.timezone.utc) <= self.not_after


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint (hex) of a certificate's DER encoding: the name rounds use for it."""
    return cert.fingerprint(hashes.SHA256()).hex()


def verify_signing_identity(ca_pem: bytes, cert_pem: bytes | str, identity: int) -> SigningIdentity:
    """``identity``'s signing certificate, verified; AuthenticationError unless it is issued by the CA, currently
    valid, named ``client-<identity>``, restricted to signatures, and holds an Ed25519 key."""
    pem = cert_pem.decode() if isinstance(cert_pem, bytes) else cert_pem
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except InvalidSignature as exc:
        raise AuthenticationError(f"signing certificate of client {identity} is not issued by this CA") from exc
    except (ValueError, TypeError, UnicodeError, x509.ExtensionNotFound) as exc:
        raise AuthenticationError(f"signing certificate of client {identity} is not valid: {exc}") from exc
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AuthenticationError(f"signing certificate of client {identity} is expired or not yet valid")
    if len(names) != 1 or names[0].value != role_name(identity):
        raise AuthenticationError(f"signing certificate names {[n.value for n in names]}, not client-{identity}")
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey) or not usage.digital_signature or usage.key_cert_sign:
        raise AuthenticationError(f"certificate of client {identity} is not an Ed25519 signing certificate")
    return SigningIdentity(identity, pem, key, fingerprint(cert), cert.not_valid_after_utc)


def verify_signing_cert(ca_pem: bytes, cert_pem: bytes | str, identity: int) -> ed25519.Ed25519PublicKey:
    """The Ed25519 key of ``identity``'s signing certificate (checked as by :func:`verify_signing_identity`)."""
    return verify_signing_identity(ca_pem, cert_pem, identity).key


def init_certs(directory: str | os.PathLike, n_clients: int) -> pathlib.Path:
    """Create a CA and certificates for the aggregator, the key holder and ``client-0 .. client-{n-1}``.

    An existing CA in ``directory`` is reused (so clients can be added later); role certificates are reissued.
    """
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "ca.pem").exists():
        _make_ca(d)
    for identity in [AGGREGATOR, KEYHOLDER, *range(n_clients)]:
        issue(d, identity)
    return d


@dataclass(frozen=True)
class Credentials:
    """PEM material of one role: the CA that every peer must chain to, and this role's certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes
    sign_cert: bytes | None = None   # a client's signing identity (certificate, PEM), when issued
    sign_key: bytes | None = None

    @classmethod
    def load(cls, directory: str | os.PathLike, identity: int) -> "Credentials":
        d = pathlib.Path(directory)
        name = role_name(identity)
        signing = [d / f"{name}.sign.pem", d / f"{name}.sign.key"]
        sign_cert, sign_key = (p.read_bytes() for p in signing) if all(p.exists() for p in signing) else (None, None)
        return cls((d / "ca.pem").read_bytes(), (d / f"{name}.pem").read_bytes(), (d / f"{name}.key").read_bytes(),
                   sign_cert, sign_key)

    def signer(self) -> ed25519.Ed25519PrivateKey | None:
        """This client's Ed25519 signing key, or None when it has no signing identity."""
        if self.sign_key is None:
            return None
        key = serialization.load_pem_private_key(self.sign_key, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise AuthenticationError("the signing key is not an Ed25519 key")
        return key

    @property
    def identity(self) -> int:
        """The role address named by this credential's own certificate."""
        cert = x509.load_pem_x509_certificate(self.cert)
        return parse_identity(str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value))
