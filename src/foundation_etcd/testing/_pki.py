"""Certificates for tests, made in Python with ``cryptography`` (no ``openssl`` binary).

:func:`make_pki` writes a CA, a server certificate valid for ``127.0.0.1`` and
``localhost`` (and as a client: etcd's gateway dials the member with it), one client
certificate per user name (its CN is the user etcd's ``--client-cert-auth`` takes it for),
and a second CA that signed nothing, for tests of a client that trusts the wrong CA. Keys
are EC P-256, unencrypted PKCS#8, mode 0600.

Annotations here are evaluated (no ``from __future__ import annotations``), as in
``_tls``: the classes are shown as ``foundation_etcd.testing.*``.
"""

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import EtcdHarnessError
from ._tls import TlsFiles

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True, slots=True)
class Pki:
    """The PEM files :func:`make_pki` wrote.

    Attributes:
        directory: where they are.
        ca: the CA certificate (``--trusted-ca-file``; a client's ``ca_cert``).
        server_cert: the server certificate, for ``127.0.0.1`` and ``localhost``.
        server_key: its key.
        other_ca: a CA that signed nothing here.
        users: the client certificates' user names (their CNs).
    """

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path
    users: tuple[str, ...]

    def client(self, user: str) -> tuple[Path, Path]:
        """The client certificate and key of ``user``.

        Raises:
            KeyError: no certificate was made for ``user``.
        """
        if user not in self.users:
            raise KeyError(f"no client certificate for {user!r} (made: {self.users})")
        name = f"client-{self.users.index(user)}"  # a user name may hold '/'
        return self.directory / f"{name}.pem", self.directory / f"{name}.key"

    def tls_files(self, *, client_cert_auth: bool = True, user: str | None = None) -> TlsFiles:
        """The member's TLS files; the harness's own checks present ``user``'s certificate."""
        cert, key = self.client(user or self.users[0])
        return TlsFiles(
            ca=self.ca,
            cert=self.server_cert,
            key=self.server_key,
            client_cert_auth=client_cert_auth,
            client_cert=cert,
            client_key=key,
        )


def _crypto() -> Any:
    try:
        from cryptography import x509
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise EtcdHarnessError(
            f"making test certificates needs the 'cryptography' package: {exc}"
        ) from exc
    return x509


def make_pki(
    directory: Path,
    *,
    users: Sequence[str] = ("client",),
    validity: datetime.timedelta = datetime.timedelta(days=2),
) -> Pki:
    """Write a CA, a server certificate, client certificates and a stray CA to ``directory``.

    Args:
        directory: an existing directory.
        users: one client certificate per name (the CN).
        validity: how long the certificates are valid (from five minutes ago).

    Raises:
        EtcdHarnessError: ``cryptography`` is not installed, or no user is named.
    """
    if not users:
        raise EtcdHarnessError("make_pki: name at least one client user")
    x509 = _crypto()
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def write(name: str, cert: Any, key: Any) -> None:
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path = directory / f"{name}.key"
        path.touch(mode=0o600)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def builder(common_name: str, key: Any) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # a little clock skew
            .not_valid_after(now + validity)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )

    def usage(*, cert_sign: bool) -> Any:
        # no keyEncipherment: an EC key signs (ECDHE), it never encrypts a key (RFC 5480)
        return x509.KeyUsage(
            digital_signature=not cert_sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=cert_sign,
            crl_sign=cert_sign,
            encipher_only=False,
            decipher_only=False,
        )

    def make_ca(name: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(name, key)
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage(cert_sign=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        write(name, cert, key)
        return cert, key

    def make_leaf(name: str, cn: str, usages: list[Any], names: list[Any]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        b = (
            builder(cn, key)
            .issuer_name(ca_cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False
            )
        )
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), False)
        write(name, b.sign(ca_key, hashes.SHA256()), key)

    ca_cert, ca_key = make_ca("ca")
    make_ca("other-ca")
    server_names = [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
    # etcd presents the server certificate to clients and, as a client, to itself (the
    # grpc-gateway), hence clientAuth beside serverAuth
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    make_leaf("server", "server", both, server_names)
    for i, user in enumerate(users):
        make_leaf(f"client-{i}", user, [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    return Pki(
        directory=directory,
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        other_ca=directory / "other-ca.pem",
        users=tuple(users),
    )
