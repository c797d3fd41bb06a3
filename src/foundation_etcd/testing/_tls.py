"""TLS for a member's client endpoint: the PEM files, etcd's flags, a client context.

A :class:`TlsFiles` is checked when it is made (client certificate and key go together;
client-certificate authentication needs a client certificate for the harness's own health
checks). Peers always talk plain HTTP on loopback.

Annotations here are evaluated (no ``from __future__ import annotations``): the class is
shown as ``foundation_etcd.testing.TlsFiles``, and ``typing.get_type_hints`` resolves
string annotations in the module a class claims, which does not define ``Path``.
"""

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files that put a member's client endpoint behind TLS.

    The server certificate must be valid for ``127.0.0.1`` (an ``IP:127.0.0.1``
    subjectAltName): the harness checks the member's health over https, verifying it.

    Attributes:
        ca: the CA that signed the server certificate and the accepted client certificates
            (``--trusted-ca-file``).
        cert: the server certificate (``--cert-file``).
        key: its private key (``--key-file``).
        client_cert_auth: require a client certificate signed by ``ca``
            (``--client-cert-auth``).
        client_cert: a client certificate the harness presents to ``/health``; required
            with ``client_cert_auth``.
        client_key: its private key.
    """

    ca: Path
    cert: Path
    key: Path
    client_cert_auth: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key", "client_cert", "client_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if self.client_cert_auth and self.client_cert is None:
            raise ValueError("client_cert_auth needs a client_cert for the health checks")

    def args(self) -> list[str]:
        """The etcd command-line arguments for TLS on the client URLs."""
        argv = [
            *("--cert-file", str(self.cert)),
            *("--key-file", str(self.key)),
            *("--trusted-ca-file", str(self.ca)),
        ]
        if self.client_cert_auth:
            argv.append("--client-cert-auth")
        return argv

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts ``ca`` and presents the client certificate, if any."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context
