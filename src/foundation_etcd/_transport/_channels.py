"""Channel construction: gRPC options, TLS credentials, the shared and per-endpoint channels.

The shared channel balances round robin over every address the endpoints resolve to, with
HTTP/2 keepalive pings so that a blackholed connection is noticed and replaced. A member
channel is pinned to one endpoint, for keepalives the session sends to a member of its
choice, and reconnects within half a second of the member answering again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from .._core.config import Config
from .._core.errors import EtcdUnavailableError
from ._protos import make_stub
from ._wire import MAX_REQUEST_BYTES

MemberFactory = Callable[[int], grpc.aio.Channel]


class MemberLeaseStubs:
    """Lease stubs on channels of one endpoint each, opened on first use.

    Args:
        factory: opens the channel of an endpoint by index; ``None`` disables them.
        endpoints: how many endpoints there are.
        fallback: the shared channel's stub, for an endpoint whose name no longer resolves.
    """

    def __init__(self, factory: MemberFactory | None, endpoints: int, fallback: Any) -> None:
        self._factory = factory
        self._endpoints = endpoints
        self._fallback = fallback
        self._stubs: dict[int, Any] = {}
        self._channels: list[grpc.aio.Channel] = []

    @property
    def enabled(self) -> bool:
        """Whether streams can be pinned to one endpoint."""
        return self._factory is not None

    def prepare(self) -> None:
        """Open every endpoint's channel now (a no-op with one endpoint)."""
        if self._factory is not None and self._endpoints > 1:
            for index in range(self._endpoints):
                self.get(index)

    def get(self, index: int) -> Any:
        """The lease stub of endpoint ``index``, on that endpoint's own channel."""
        stub = self._stubs.get(index)
        if stub is None:
            assert self._factory is not None
            try:
                channel = self._factory(index)
            except OSError:  # its name no longer resolves: the shared channel will do
                return self._fallback
            channel.get_state(try_to_connect=True)
            self._channels.append(channel)
            stub = self._stubs[index] = make_stub(channel, "Lease")
        return stub

    async def close(self) -> None:
        """Close the channels opened."""
        for ch in self._channels:
            await ch.close()


def _addresses(endpoint: str) -> tuple[list[str], str | None]:
    """Resolve one endpoint to ``ip:port`` addresses; also return its host name, if any."""
    host, _, port = endpoint.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return [endpoint], None
    except ValueError:
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
        return [f"{info[4][0]}:{port}" for info in infos], host


def _target(endpoints: Sequence[str]) -> tuple[str, str | None]:
    """Return the gRPC target for ``endpoints`` and the host name to verify with TLS."""
    addrs: list[str] = []
    hostname: str | None = None
    for endpoint in endpoints:
        resolved, host = _addresses(endpoint)
        hostname = hostname or host
        addrs.extend(resolved)
    return "ipv4:" + ",".join(dict.fromkeys(addrs)), hostname


def open_channels(config: Config) -> tuple[grpc.aio.Channel, MemberFactory]:
    """Open the shared channel to ``config.endpoints``; return it and the member factory.

    The factory opens a channel to one endpoint, by its index in ``config.endpoints``; it
    raises :class:`OSError` when that endpoint's name no longer resolves.

    Raises:
        EtcdUnavailableError: an endpoint's name does not resolve.
    """
    try:
        target, hostname = _target(config.endpoints)
    except OSError as exc:
        raise EtcdUnavailableError(f"cannot resolve endpoints {config.endpoints}: {exc}") from exc
    options: list[tuple[str, Any]] = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", int(config.grpc_keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.grpc_keepalive_timeout * 1000)),
        # pings also on connections without a call: a paused member (SIGSTOP) holds its TCP
        # connection open, and only an unanswered ping takes it out of the round robin.
        # etcd answers pings on a connection with no open stream with GOAWAY
        # "too_many_pings" (gRPC then doubles the interval); sending none there was tried
        # and made paused-member tests lose leases, so we accept the GOAWAYs.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        # gRPC takes this as the shortest connection attempt too: a member that has just
        # resumed, or a TLS handshake on a busy machine, may need more than 100 ms
        ("grpc.min_reconnect_backoff_ms", 1000),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.max_receive_message_length", 2**31 - 1),
        ("grpc.max_send_message_length", MAX_REQUEST_BYTES + 512 * 1024),
    ]
    creds: grpc.ChannelCredentials | None = None
    if config.ca_cert is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=config.ca_cert.read_bytes(),
            private_key=config.client_key.read_bytes() if config.client_key else None,
            certificate_chain=config.client_cert.read_bytes() if config.client_cert else None,
        )
        name = config.server_name or hostname
        if name:
            options.append(("grpc.ssl_target_name_override", name))

    def make_channel(target: str, opts: list[tuple[str, Any]]) -> grpc.aio.Channel:
        if creds is not None:
            return grpc.aio.secure_channel(target, creds, options=opts)
        return grpc.aio.insecure_channel(target, options=opts)

    def member_channel(index: int) -> grpc.aio.Channel:
        # one endpoint only: the session sends a retried keepalive to a member of its
        # choice, so that a member that hangs cannot take every retry
        addrs, host = _addresses(config.endpoints[index])
        opts = [
            o
            for o in options
            if o[0] not in ("grpc.ssl_target_name_override", "grpc.max_reconnect_backoff_ms")
        ]
        # back within half a second of the member answering again
        opts.append(("grpc.max_reconnect_backoff_ms", 500))
        name = config.server_name or host or hostname
        if creds is not None and name:
            opts.append(("grpc.ssl_target_name_override", name))
        return make_channel("ipv4:" + ",".join(dict.fromkeys(addrs)), opts)

    return make_channel(target, options), member_channel
