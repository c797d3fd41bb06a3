"""A node process hosting two 'text' agents and reporting registry changes as JSON lines.

Usage: python -m integration.workers.registry_node NODE_ID ENDPOINTS NAMESPACE TTL
"""

import json
import sys
import time
import warnings

import anyio

from foundation_etcd import ChangeKind, Config, connect


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


class TextAgent:
    pass


async def main() -> None:
    node_id, endpoints, namespace, ttl = sys.argv[1:5]
    cfg = Config(endpoints=tuple(endpoints.split(",")), namespace=namespace, ttl=float(ttl))
    async with connect(cfg, node_id=node_id) as c:
        async with (
            c.host(TextAgent(), f"{node_id}-one", capabilities=["text"]),
            c.host(TextAgent(), f"{node_id}-two", capabilities=["text"]),
            c.registry.watch() as changes,
        ):
            say("ready", node=node_id)
            say("lookup", agents=[a.agent_id for a in c.registry.find("text")])
            async for batch in changes:
                for ch in batch:
                    if ch.kind is ChangeKind.REMOVED:
                        say("removed", agent=ch.agent.agent_id)
                say("lookup", agents=[a.agent_id for a in c.registry.find("text")])


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    anyio.run(main)
