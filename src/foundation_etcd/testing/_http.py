"""JSON over HTTP(S) to a member's client endpoint (``/health``, the v3 JSON gateway).

Requests never go through a proxy named by the environment (``http_proxy``): the members
are on loopback. :func:`request_json` never raises for a member that is down, slow or
answering nonsense: it returns ``None``, and the caller decides how long to keep asking.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

from ._tls import TlsFiles

__all__ = ["NO_PROXY_OPENER", "opener_for", "request_json"]

# urllib must not route loopback requests through an http_proxy from the environment.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def opener_for(tls: TlsFiles | None) -> urllib.request.OpenerDirector:
    """Return the opener for a member's client URLs, with or without TLS.

    Without TLS it is :data:`NO_PROXY_OPENER`; with TLS, one that verifies the member against
    ``tls.ca`` and presents the client certificate, if any.
    """
    if tls is None:
        return NO_PROXY_OPENER
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=tls.ssl_context()),
    )


def request_json(
    url: str,
    body: bytes | None,
    timeout: float,
    opener: urllib.request.OpenerDirector = NO_PROXY_OPENER,
) -> dict[str, object] | None:
    """GET (or POST ``body``) and decode a JSON object; ``None`` when there is no answer."""
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    try:
        with opener.open(request, timeout=max(timeout, 0.01)) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        try:
            data = exc.read()
        finally:
            exc.close()
    except (OSError, http.client.HTTPException, ValueError):
        return None
    try:
        decoded = json.loads(data)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None
