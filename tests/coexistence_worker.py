"""One process with foundation_etcd and another etcd client: import both, put/get with both.

Run by tests/test_coexistence.py in an environment where the other client is installed:

    python coexistence_worker.py {fe-first|peer-first} {etcd3|aetcd} HOST:PORT PREFIX

Prints ``ok <details>`` and exits 0 when every step worked.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any


def main() -> None:
    order, peer, endpoint, prefix = sys.argv[1:5]
    host, _, port = endpoint.rpartition(":")
    modules = ["foundation_etcd", "foundation_etcd.lowlevel", peer]
    if order == "peer-first":
        modules = [peer, "foundation_etcd", "foundation_etcd.lowlevel"]
    for name in modules:
        importlib.import_module(name)

    from google.protobuf import descriptor_pool
    from google.protobuf.internal import api_implementation

    import foundation_etcd as fe
    from foundation_etcd.lowlevel import open_transport

    peer_key, fe_key = f"{prefix}/by-peer".encode(), f"{prefix}/by-fe".encode()

    async def with_fe() -> bytes:
        async with open_transport(fe.Config(endpoints=(endpoint,), connect_timeout=10)) as t:
            await t.put(fe_key, b"from foundation_etcd")
            got = await t.get(peer_key)
            assert got is not None, "foundation_etcd does not see the peer's key"
            return got.value

    if peer == "etcd3":  # python3-etcd3 or etcd3 0.12: a blocking client
        etcd3: Any = importlib.import_module("etcd3")
        client = etcd3.client(host=host, port=int(port), timeout=10)
        client.put(peer_key, b"from the peer")
        seen_by_fe = asyncio.run(with_fe())
        value, _meta = client.get(fe_key)
        client.close()
    elif peer == "aetcd":
        aetcd: Any = importlib.import_module("aetcd")

        async def both() -> tuple[bytes, bytes]:
            async with aetcd.Client(host=host, port=int(port), timeout=10) as client:
                await client.put(peer_key, b"from the peer")
                seen = await with_fe()
                got = await client.get(fe_key)
                return seen, got.value

        seen_by_fe, value = asyncio.run(both())
    else:
        raise SystemExit(f"unknown peer {peer!r}")
    assert seen_by_fe == b"from the peer", seen_by_fe
    assert value == b"from foundation_etcd", value
    try:  # etcd's protos in the default pool come from the peer alone, if from anyone
        descriptor_pool.Default().FindMessageTypeByName("etcdserverpb.RangeRequest")
        default_pool = "peer's"
    except KeyError:
        default_pool = "none"
    print(f"ok protobuf={api_implementation.Type()} default-pool-etcd={default_pool}")


if __name__ == "__main__":
    main()
