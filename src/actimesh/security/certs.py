"""A small certificate authority for the broker's TLS listener (``actimesh certs``).

Files, in ``{data_dir}/certs/`` (keys 0600, folders 0700)::

    ca.pem, ca.key                  the CA (``certs init``)
    server.pem, server.key          the broker's certificate (``certs init`` / ``certs server``)
    clients/{name}.pem, {name}.key  client certificates for mutual TLS (``certs client``)

Keys are **ECDSA P-256**. Mosquitto 2.0 on OpenSSL 3 and Python's :mod:`ssl` (under
paho and aiomqtt) all accept it, as does every TLS stack a body camera is likely to run;
Ed25519 certificates are still refused by many embedded TLS libraries and by several
browsers, and RSA keys are larger and slower for the same strength. The server
certificate names ``localhost``, ``127.0.0.1`` and ``::1`` plus every ``--host`` given,
because clients check the name they connected to against it.

An operator may bring certificates from their own PKI instead: ``[broker]`` ``ca_file``,
``server_cert`` and ``server_key`` in the config (see docs/OPERATIONS.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from actimesh.broker.topics import is_identifier
from actimesh.errors import SecurityError
from actimesh.private import write_private

__all__ = [
    "CERTS_DIR",
    "DEFAULT_CA_DAYS",
    "DEFAULT_CLIENT_DAYS",
    "DEFAULT_SERVER_DAYS",
    "CertFiles",
    "CertInfo",
    "ServerTls",
    "describe",
    "init_ca",
    "issue_client",
    "issue_node",
    "issue_server",
    "server_names",
    "server_tls",
]

CERTS_DIR = "certs"
DEFAULT_CA_DAYS = 3650
#: 825 days: the longest server certificate lifetime Apple's TLS clients accept.
DEFAULT_SERVER_DAYS = 825
DEFAULT_CLIENT_DAYS = 365
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
#: Certificates start a little in the past, so a device whose clock runs a few minutes
#: behind does not refuse a certificate issued a moment ago.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertFiles:
    """A certificate and its private key (PEM)."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class ServerTls:
    """What the broker's TLS listener needs."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What ``actimesh certs show`` prints about one certificate."""

    path: Path
    subject: str
    issuer: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    names: tuple[str, ...]
    is_ca: bool
    sha256: str

    @property
    def expired(self) -> bool:
        return dt.datetime.now(dt.UTC) > self.not_after


def _ca_files(directory: Path) -> CertFiles:
    return CertFiles(directory / "ca.pem", directory / "ca.key")


def _now(now: dt.datetime | None) -> dt.datetime:
    return dt.datetime.now(dt.UTC) if now is None else now


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _write_pair(files: CertFiles, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # the broker reads it unattended
    )
    write_private(files.key, key_pem.decode("ascii"))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.cert.chmod(0o644)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    files = _ca_files(directory)
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except FileNotFoundError:
        raise SecurityError(f"no CA in {directory}: run `actimesh certs init` first") from None
    except ValueError as exc:
        raise SecurityError(f"the CA in {directory} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SecurityError(f"the CA key in {directory} is not an EC key: run `certs init --force`")
    return cert, key


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise SecurityError(f"--days {days}: a certificate is valid for 1 to 36500 days")


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # A CA signs certificates and nothing else; a leaf signs TLS handshakes (ECDSA).
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def init_ca(
    directory: Path,
    *,
    days: int = DEFAULT_CA_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> CertFiles:
    """Create the CA in ``directory``. An existing CA is kept unless ``force``: replacing
    it invalidates every certificate it issued."""
    _check_days(days)
    files = _ca_files(directory)
    if files.cert.exists() and not force:
        raise SecurityError(
            f"a CA already exists in {directory}: keep it, or pass --force to replace it "
            "(every certificate it issued stops working)"
        )
    _private_dir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "actimesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, "actimesh broker CA"),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), _now(now), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(files, cert, key)
    return files


def _leaf(
    directory: Path,
    files: CertFiles,
    common_name: str,
    *,
    server: bool,
    names: tuple[str, ...],
    days: int,
    now: dt.datetime | None,
    client_too: bool = False,
) -> CertFiles:
    _check_days(days)
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "actimesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    usages = [usage, ExtendedKeyUsageOID.CLIENT_AUTH] if server and client_too else [usage]
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), _now(now), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    _private_dir(files.cert.parent)
    _write_pair(files, builder.sign(ca_key, hashes.SHA256()), key)
    return files


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _check_host(host: str) -> str:
    host = host.strip()
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    labels = host.rstrip(".").split(".")
    if (
        not host
        or len(host) > 253
        or not all(
            label and len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
            for label in labels
        )
    ):
        raise SecurityError(f"--host {host!r} is not a host name or IP address")
    return host.rstrip(".").lower()


def issue_server(
    directory: Path,
    *,
    hosts: tuple[str, ...] = (),
    days: int = DEFAULT_SERVER_DAYS,
    now: dt.datetime | None = None,
) -> CertFiles:
    """The broker's certificate, for localhost, 127.0.0.1, ::1 and ``hosts``."""
    names = tuple(dict.fromkeys((*_LOCAL_NAMES, *(_check_host(h) for h in hosts))))
    files = CertFiles(directory / "server.pem", directory / "server.key")
    common = next((n for n in names if n not in _LOCAL_NAMES), "localhost")
    return _leaf(directory, files, common, server=True, names=names, days=days, now=now)


def issue_node(
    directory: Path,
    name: str,
    *,
    hosts: tuple[str, ...] = (),
    days: int = DEFAULT_SERVER_DAYS,
    now: dt.datetime | None = None,
) -> CertFiles:
    """A NATS cluster node's certificate, ``nodes/{name}.pem``: a server certificate for
    localhost, 127.0.0.1, ::1 and ``hosts`` that is also good for client authentication,
    since a node dials its routes to the other nodes as a client (mutual TLS)."""
    if not is_identifier(name):
        raise SecurityError(
            f"node name {name!r} is not valid: use letters, digits, '.', '_' or '-'"
        )
    names = tuple(dict.fromkeys((*_LOCAL_NAMES, *(_check_host(h) for h in hosts))))
    files = CertFiles(directory / "nodes" / f"{name}.pem", directory / "nodes" / f"{name}.key")
    common = next((n for n in names if n not in _LOCAL_NAMES), "localhost")
    return _leaf(
        directory, files, common, server=True, names=names, days=days, now=now, client_too=True
    )


def issue_client(
    directory: Path,
    name: str,
    *,
    days: int = DEFAULT_CLIENT_DAYS,
    now: dt.datetime | None = None,
) -> CertFiles:
    """A client certificate for mutual TLS, ``clients/{name}.pem`` (``name``: a device
    or account id; the broker still checks its username and password)."""
    if not is_identifier(name):
        raise SecurityError(
            f"client name {name!r} is not valid: use letters, digits, '.', '_' or '-'"
        )
    files = CertFiles(directory / "clients" / f"{name}.pem", directory / "clients" / f"{name}.key")
    return _leaf(directory, files, name, server=False, names=(), days=days, now=now)


def describe(path: Path) -> CertInfo:
    """Subject, issuer, validity and names of the PEM certificate at ``path``."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise SecurityError(f"no certificate at {path}: see `actimesh certs --help`") from None
    except ValueError as exc:
        raise SecurityError(f"{path} is not a PEM certificate: {exc}") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        names = (*dns, *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))
    except x509.ExtensionNotFound:
        names = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        path=path,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        names=names,
        is_ca=is_ca,
        sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
    )


def server_names(path: Path) -> tuple[str, ...]:
    """The names a client may use to reach the broker whose certificate is ``path``."""
    return describe(path).names


def server_tls(directory: Path) -> ServerTls | None:
    """The CA and server certificate in ``directory``, or None unless all three exist."""
    tls = ServerTls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if all(p.is_file() for p in (tls.ca, tls.cert, tls.key)):
        return tls
    return None
