"""Configuration: one frozen object, from arguments or ``FOUNDATION_ETCD_*`` variables.

Every value is checked when the object is built, so a mistake surfaces at start-up with the
name of the setting, not as a timeout later:

* at least one endpoint, each ``host:port`` (an ``http://`` or ``https://`` scheme is
  accepted; ``https`` requires a CA);
* TLS files exist and are readable PEM; a client certificate comes with its key;
* a user comes with a password;
* session timings satisfy ``ttl > step_down + keepalive_interval`` and
  ``step_down > 1.2 * keepalive_interval``. ``ttl - step_down - keepalive_interval`` is the
  *retry budget*: how long a keepalive may go unanswered (while it is hedged to other
  members) before the safe deadline. The defaults (``keepalive_interval = ttl / 6``,
  ``step_down = ttl / 3``) give ``ttl / 2``: 2.5 s at ``ttl = 5``, more than a raft leader
  change takes with etcd's default timings (up to 2 x its 1 s election timeout).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .keys import Keyspace, validate_id
from .sealing import Keyring
from .signing import load_signer

__all__ = ["Config"]

ENV_PREFIX = "FOUNDATION_ETCD_"
_PATHS = ("ca_cert", "client_cert", "client_key", "audit_signing_key", "encryption", "signing_key")
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_MIN_TTL = 2.0  # etcd never grants less than about 2 s with default election timing


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(name, f"must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(name, f"must be a positive number of seconds, not {value!r}")
    return float(value)


def _count(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # from the environment every number is a float
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(name, f"must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise ConfigurationError(name, f"must be between {low} and {high}, not {value}")
    return value


def _endpoint(raw: str) -> tuple[str, bool]:
    """Normalise one endpoint to ``host:port``; return it and whether it asked for TLS."""
    text = raw.strip()
    tls = False
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            tls = scheme == "https://"
            text = text[len(scheme) :]
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or "/" in text:
        raise ConfigurationError("endpoints", f"{raw!r} is not host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError("endpoints", f"{raw!r} has no valid port")
    if host == "localhost":
        host = "127.0.0.1"  # avoid resolver ambiguity between ::1 and 127.0.0.1
    return f"{host}:{int(port)}", tls


def _pem(name: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(name, f"cannot read {str(path)!r}: {exc.strerror}") from exc
    if b"-----BEGIN " not in data:
        raise ConfigurationError(name, f"{str(path)!r} is not a PEM file")
    return path


@dataclass(frozen=True, slots=True)
class Config:
    """How to reach etcd, where to keep keys, and the session's timings.

    Attributes:
        endpoints: etcd client endpoints, ``host:port``; requests are balanced over them and
            fail over between them.
        namespace: top-level key namespace (an id).
        tenant: tenant within the namespace (an id); all keys live under
            ``/{namespace}/{tenant}/``.
        ca_cert: PEM file of the CA that signed the etcd servers' certificates; enables TLS.
        client_cert: PEM client certificate for mutual TLS (needs ``client_key``).
        client_key: PEM private key of ``client_cert``.
        server_name: name to verify in the server certificate, when it differs from the
            endpoint host (needed with several IP endpoints and TLS).
        user: etcd user for authentication (needs ``password``).
        password: the user's password.
        ttl: lease time-to-live asked of etcd, seconds.
        keepalive_interval: seconds between keepalives; default ``ttl / 6``.
        step_down: seconds before etcd could expire the lease at which the process stops
            acting for it; default ``ttl / 3``.
        request_timeout: deadline of one unary request, seconds.
        connect_timeout: how long ``connect`` waits for a first answer, seconds.
        grpc_keepalive_time: seconds between HTTP/2 pings on every connection, so that a
            blackholed or paused member is noticed. etcd refuses pings more often than every
            5 s, and answers those on a connection with no open stream with GOAWAY (gRPC
            then pings that connection half as often).
        grpc_keepalive_timeout: seconds to wait for a ping's answer before the connection
            is declared dead.
        watch_progress_interval: a watch stream silent this long is asked for progress; one
            silent for twice as long is restarted.
        signal_max_bytes: the largest encoded signal (envelope and JSON payload) ``send``
            accepts; 64 KiB by default, at most 1 MiB (etcd refuses requests over 1.5 MiB
            and a handled signal's acknowledgement carries the agent's state too).
        signal_inbox_limit: signals that may wait in one agent's inbox; a send beyond it
            fails with :class:`InboxFullError`. Every sender enforces its own value: keep
            it the same in every process of a cluster.
        signal_max_attempts: failed deliveries after which a signal goes to dead letters.
        signal_retention: seconds a handled signal's id is remembered (a send with the same
            id within it is a duplicate and delivers nothing), and a call's reply kept.
        audit_signing_key: a file holding the Ed25519 private key (PEM, unencrypted, or
            its 32 raw bytes) that signs every audit record this process writes; needs
            the ``cryptography`` package. ``connect`` loads it, so a bad key fails there.
        encryption: the keyring that encrypts agent state checkpoints, signal payloads
            and replies (AES-256-GCM): a key file (see ``docs/security.md``) or a
            :class:`~foundation_etcd.Keyring`. Plaintext values stay readable. Give every
            process of a tenant the same keys; needs ``cryptography``.
        signing_key: a file holding this process's Ed25519 private key (PEM or 32 raw
            bytes): every signal it sends or emits is signed with it, under the key id
            ``Tenants.trust`` printed for its public key. Loaded (checked) here.
        require_signed_signals: dead-letter every signal that is not signed by a key the
            tenant trusts, instead of only the wrongly signed ones.
    """

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    namespace: str = "foundation"
    tenant: str = "default"
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ttl: float = 10.0
    keepalive_interval: float | None = None
    step_down: float | None = None
    request_timeout: float = 5.0
    connect_timeout: float = 5.0
    grpc_keepalive_time: float = 5.0
    grpc_keepalive_timeout: float = 3.0
    watch_progress_interval: float = 5.0
    signal_max_bytes: int = 64 * 1024
    signal_inbox_limit: int = 1000
    signal_max_attempts: int = 5
    signal_retention: float = 86400.0
    audit_signing_key: Path | None = None
    encryption: Keyring | Path | None = None
    signing_key: Path | None = None
    require_signed_signals: bool = False

    def __post_init__(self) -> None:
        raw = self.endpoints
        if isinstance(raw, str):
            raw = tuple(e for e in raw.split(",") if e.strip())
        if not isinstance(raw, Sequence) or not raw:
            raise ConfigurationError("endpoints", "at least one endpoint is required")
        parsed = [_endpoint(str(e)) for e in raw]
        object.__setattr__(self, "endpoints", tuple(dict.fromkeys(e for e, _ in parsed)))
        validate_id(self.namespace, "namespace")
        validate_id(self.tenant, "tenant")

        object.__setattr__(self, "ca_cert", _pem("ca_cert", self.ca_cert))
        object.__setattr__(self, "client_cert", _pem("client_cert", self.client_cert))
        object.__setattr__(self, "client_key", _pem("client_key", self.client_key))
        if any(tls for _, tls in parsed) and self.ca_cert is None:
            raise ConfigurationError("ca_cert", "an https:// endpoint needs a CA certificate")
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigurationError("client_cert", "client_cert and client_key go together")
        if self.client_cert is not None and self.ca_cert is None:
            raise ConfigurationError("ca_cert", "mutual TLS needs a CA certificate")
        if (self.user is None) != (self.password is None):
            raise ConfigurationError("user", "user and password go together")

        ttl = _positive("ttl", self.ttl)
        if ttl < _MIN_TTL:
            raise ConfigurationError("ttl", f"must be at least {_MIN_TTL} s (etcd's minimum)")
        interval = ttl / 6 if self.keepalive_interval is None else self.keepalive_interval
        interval = _positive("keepalive_interval", interval)
        step_down = ttl / 3 if self.step_down is None else self.step_down
        step_down = _positive("step_down", step_down)
        object.__setattr__(self, "ttl", ttl)
        object.__setattr__(self, "keepalive_interval", interval)
        object.__setattr__(self, "step_down", step_down)
        if not ttl > step_down + interval:
            raise ConfigurationError(
                "ttl",
                f"ttl ({ttl:g}) must exceed step_down ({step_down:g}) + "
                f"keepalive_interval ({interval:g})",
            )
        if not step_down > 1.2 * interval:
            raise ConfigurationError(
                "step_down",
                f"step_down ({step_down:g}) must exceed 1.2 x keepalive_interval ({interval:g})",
            )
        for name in (
            "request_timeout",
            "connect_timeout",
            "grpc_keepalive_time",
            "grpc_keepalive_timeout",
            "watch_progress_interval",
            "signal_retention",
        ):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))
        limits = {
            "signal_max_bytes": (1024, 1024 * 1024),
            "signal_inbox_limit": (1, 1_000_000),
            "signal_max_attempts": (1, 1000),
        }
        for name, (low, high) in limits.items():
            object.__setattr__(self, name, _count(name, getattr(self, name), low, high))
        if self.signal_retention < 60:
            raise ConfigurationError("signal_retention", "must be at least 60 s")
        if self.audit_signing_key is not None:
            key = Path(self.audit_signing_key)
            try:
                size = len(key.read_bytes())
            except OSError as exc:
                why = f"cannot read {str(key)!r}: {exc.strerror}"
                raise ConfigurationError("audit_signing_key", why) from exc
            if size == 0:
                raise ConfigurationError("audit_signing_key", f"{str(key)!r} is empty")
            object.__setattr__(self, "audit_signing_key", key)
        if isinstance(self.encryption, str | Path):
            object.__setattr__(self, "encryption", Keyring.from_file(self.encryption))
        elif self.encryption is not None and not isinstance(self.encryption, Keyring):
            why = f"must be a key file or a Keyring, not {type(self.encryption).__name__}"
            raise ConfigurationError("encryption", why)
        if self.signing_key is not None:
            object.__setattr__(self, "signing_key", Path(self.signing_key))
            load_signer(self.signing_key)  # a bad key fails here, not at the first send
        if not isinstance(self.require_signed_signals, bool):
            why = f"must be True or False, not {self.require_signed_signals!r}"
            raise ConfigurationError("require_signed_signals", why)

    @property
    def keyspace(self) -> Keyspace:
        """The key layout of this namespace and tenant (one shared, immutable object)."""
        return _keyspace(self.namespace, self.tenant)

    @property
    def keyring(self) -> Keyring | None:
        """The encryption keyring (``encryption`` once loaded), or ``None``."""
        assert not isinstance(self.encryption, Path)
        return self.encryption

    @property
    def tls(self) -> bool:
        """Whether connections use TLS."""
        return self.ca_cert is not None

    @property
    def safe_keepalive_interval(self) -> float:
        """``keepalive_interval`` as a float (always set after construction)."""
        assert self.keepalive_interval is not None
        return self.keepalive_interval

    @property
    def retry_budget(self) -> float:
        """Seconds a keepalive may stay unanswered before the safe deadline.

        ``ttl - step_down - keepalive_interval``: after a keepalive answered at ``s``, the
        next is sent at ``s + keepalive_interval`` and the lease is given up at
        ``s + ttl - step_down``. A session rides out an etcd fault (a member or raft leader
        that hangs, a leader change) that lasts less than this.
        """
        return self.ttl - self.safe_step_down - self.safe_keepalive_interval

    @property
    def safe_step_down(self) -> float:
        """``step_down`` as a float (always set after construction)."""
        assert self.step_down is not None
        return self.step_down

    def with_options(self, **changes: Any) -> Config:
        """Return a copy with some settings changed, validated again.

        A timing left at its default (``ttl / 6``, ``ttl / 3``) follows a changed ``ttl``.
        """
        if "ttl" in changes:
            if "keepalive_interval" not in changes and self.keepalive_interval == self.ttl / 6:
                changes["keepalive_interval"] = None
            if "step_down" not in changes and self.step_down == self.ttl / 3:
                changes["step_down"] = None
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a configuration from ``FOUNDATION_ETCD_*`` variables and arguments.

        Variables are the upper-case field names with the prefix, e.g.
        ``FOUNDATION_ETCD_ENDPOINTS=10.0.0.1:2379,10.0.0.2:2379``,
        ``FOUNDATION_ETCD_TTL=15``, ``FOUNDATION_ETCD_CA_CERT=/etc/etcd/ca.pem``.
        Arguments win over variables.

        Args:
            env: the environment to read; ``os.environ`` by default.
            **overrides: settings that take precedence over the environment.

        Raises:
            ConfigurationError: for unknown keyword arguments or invalid values.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            text = env.get(ENV_PREFIX + f.name.upper())
            if text is None or text == "":
                continue
            if f.name in _PATHS:
                values[f.name] = Path(text)
            elif f.name == "require_signed_signals":
                flag = text.strip().lower()
                if flag not in _FLAGS:
                    raise ConfigurationError(
                        f.name, f"{ENV_PREFIX + f.name.upper()}={text!r} is not true or false"
                    )
                values[f.name] = _FLAGS[flag]
            elif f.name == "endpoints":
                values[f.name] = tuple(e for e in text.split(",") if e.strip())
            elif f.name in ("namespace", "tenant", "server_name", "user", "password"):
                values[f.name] = text
            else:
                try:
                    values[f.name] = float(text)
                except ValueError:
                    raise ConfigurationError(
                        f.name, f"{ENV_PREFIX + f.name.upper()}={text!r} is not a number"
                    ) from None
        known = {f.name for f in fields(cls)}
        for name in overrides:
            if name not in known:
                raise ConfigurationError(name, "unknown setting")
        values.update(overrides)
        return cls(**values)


@lru_cache(maxsize=64)
def _keyspace(namespace: str, tenant: str) -> Keyspace:
    # read on every lock, election and key built from a Config: made (and validated) once
    return Keyspace(namespace, tenant)
