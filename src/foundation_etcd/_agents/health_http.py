"""Health endpoints over HTTP for probes (``foundation-etcd node run --health-port P``).

A minimal HTTP/1.1 server on anyio's TCP listener (no dependency): one request per
connection, ``GET`` or ``HEAD``, answered with JSON and ``Connection: close``.

=========================  ===================================================================
``GET /health``            200 with :meth:`HealthReport.to_dict` unless the status is
                           ``failing``; 503 with the same body when it is
``GET /live``              200 while the process's session is open (a lost lease being
                           replaced still counts: ``/health`` reports it); 503 once closed
``GET /ready``             200 once this node serves (``Cluster.serve``), its views are caught
                           up and its status is not ``failing``; 503 before and otherwise
``GET /leader/{election}`` 200 only while this process's live lease holds the leadership of
                           ``election`` (one linearizable read); 503 otherwise, 400 for a bad
                           name
anything else              404 (405 for another method)
=========================  ===================================================================

Guarantees:
    * Every answer is bounded: reading the request by ``_READ_TIMEOUT``, the report and the
      leadership read by ``within``; an unreachable etcd makes ``/health`` answer 503, never hang.
    * A malformed or oversized request (more than 8 KiB of headers) is answered 400 and
      the connection closed; one slow client never blocks the others.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import SocketStream, TaskStatus

from .._core.errors import FoundationEtcdError, InvalidIdError
from .health import holds_leadership

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["serve_health"]

log = logging.getLogger("foundation_etcd.health")

_READ_TIMEOUT = 5.0
_MAX_HEAD = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[503] = "Service Unavailable"


async def serve_health(
    cluster: Cluster,
    port: int,
    host: str = "127.0.0.1",
    *,
    within: float = 2.0,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the health endpoints of ``cluster`` on ``host:port`` until cancelled.

    Args:
        cluster: the connected cluster whose health is served.
        port: the TCP port (0: any free port; ``task_status`` reports the one bound).
        host: the address to bind (loopback by default).
        within: the bound of each health report and leadership read, seconds.
        task_status: ``await tg.start(serve_health, ...)`` returns the bound port.

    Raises:
        OSError: the address cannot be bound.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound: int = listener.extra(anyio.abc.SocketAttribute.local_port)
        log.info("health endpoints on http://%s:%d/", host, bound)
        task_status.started(bound)

        async def handle(stream: SocketStream) -> None:
            async with stream:
                try:
                    await _handle(cluster, stream, within)
                except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                    pass  # the client went away
                except Exception:
                    log.exception("health request failed")

        await listener.serve(handle)


async def _read_head(stream: SocketStream) -> bytes | None:
    data = b""
    with anyio.move_on_after(_READ_TIMEOUT):
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            if len(data) > _MAX_HEAD:
                return None
            chunk = await stream.receive(4096)
            data += chunk
        end = min(i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0)
        return None if end > _MAX_HEAD else data  # the head itself, not what came after
    return None


async def _handle(cluster: Cluster, stream: SocketStream, within: float) -> None:
    head = await _read_head(stream)
    parts = head.split(b"\n", 1)[0].decode("latin-1").split() if head else []
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        await _send(stream, 400, {"error": "bad request"}, body=True)
        return
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        await _send(stream, 405, {"error": f"method {method} not allowed"}, body=True)
        return
    code, payload = await _route(cluster, target, within)
    await _send(stream, code, payload, body=method == "GET")


async def _route(cluster: Cluster, path: str, within: float) -> tuple[int, dict[str, Any]]:
    if path == "/health":
        report = await cluster.health(within=within)
        return (503 if report.status == "failing" else 200), report.to_dict()
    if path == "/live":
        live = not cluster.session.closed
        return (200 if live else 503), {"live": live, "node_id": cluster.node_id}
    if path == "/ready":
        report = await cluster.health(within=within)
        ready = report.serving and report.views_caught_up and report.status != "failing"
        body = {"ready": ready, "node_id": cluster.node_id, "status": report.status}
        body["reasons"] = list(report.reasons) + ([] if report.serving else ["not serving"])
        return (200 if ready else 503), body
    if path.startswith("/leader/"):
        name = path[len("/leader/") :]
        try:
            with anyio.fail_after(within):
                leads = await holds_leadership(cluster.session, name)
        except InvalidIdError as exc:
            return 400, {"error": str(exc)}
        except (FoundationEtcdError, TimeoutError) as exc:
            return 503, {"leader": False, "election": name, "error": str(exc) or "timeout"}
        return (200 if leads else 503), {
            "leader": leads,
            "election": name,
            "node_id": cluster.node_id,
        }
    return 404, {"error": f"no such endpoint: {path}"}


async def _send(stream: SocketStream, code: int, payload: dict[str, Any], *, body: bool) -> None:
    data = json.dumps(payload, sort_keys=True).encode() + b"\n"
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    await stream.send(head + data if body else head)
