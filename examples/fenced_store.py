"""A store outside etcd that refuses writes from a stale leader, by fencing token.

etcd refuses a former leader's fenced writes by itself; a database elsewhere cannot see etcd,
so the leader hands it the fencing token with each write. The store keeps the highest token
it has seen and refuses lower ones: a leader that was paused and replaced can no longer
overwrite its successor's work, however late it wakes up.

Run: python examples/fenced_store.py [ENDPOINT] [NAMESPACE] (or FOUNDATION_ETCD_ENDPOINTS)
"""

import sqlite3
import sys

import anyio

from foundation_etcd import Config, Election, open_session
from foundation_etcd.lowlevel import open_transport


class StaleTokenError(Exception):
    """The write carried a lower token than one the store has already accepted."""


class FencedStore:
    """A SQLite table whose writers must prove, by token, that they are the newest leader."""

    def __init__(self, path: str = ":memory:") -> None:
        self.db = sqlite3.connect(path)
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS fence (token INTEGER NOT NULL)")
            self.db.execute("INSERT INTO fence SELECT 0 WHERE NOT EXISTS (SELECT * FROM fence)")
            self.db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")

    def write(self, token: int, key: str, value: str) -> None:
        """Write ``key`` unless ``token`` is lower than the highest token seen."""
        with self.db:  # one transaction: the token check and the write commit together
            raised = self.db.execute("UPDATE fence SET token = ? WHERE token <= ?", (token, token))
            if raised.rowcount == 0:
                (highest,) = self.db.execute("SELECT token FROM fence").fetchone()
                raise StaleTokenError(f"token {token} < {highest}")
            self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def read(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]


async def main(cfg: Config, store: FencedStore) -> list[str]:
    """Two processes' sessions lead in turn; the first, stale, then writes and is refused."""
    out = []
    async with open_transport(cfg) as t, open_session(t) as a, open_session(t) as b:
        async with Election(a, "report-writer").campaign("a") as first:
            store.write(first.fencing_token, "report", "by a")
            out.append(f"a leads with token {first.fencing_token} and writes")
        # a paused past its lease would lose the leadership the same way; b takes over
        async with Election(b, "report-writer").campaign("b") as second:
            store.write(second.fencing_token, "report", "by b")
            out.append(f"b leads with token {second.fencing_token} and writes")
        try:  # a wakes up, still believing it leads
            store.write(first.fencing_token, "report", "stale, by a")
        except StaleTokenError as exc:
            out.append(f"a's late write refused: {exc}")
    out.append(f"report = {store.read('report')!r}")
    return out


if __name__ == "__main__":
    # the endpoint: the first argument, else FOUNDATION_ETCD_ENDPOINTS, else 127.0.0.1:2379
    given = {"endpoints": (sys.argv[1],)} if len(sys.argv) > 1 else {}
    namespace = sys.argv[2] if len(sys.argv) > 2 else "fenced-store-example"
    config = Config.from_env(**given, namespace=namespace, ttl=5.0)
    for line in anyio.run(main, config, FencedStore()):
        print(line)
