"""A Flask-style request handler taking a fenced lock, through the blocking API.

Run against any etcd: FOUNDATION_ETCD_ENDPOINTS=127.0.0.1:2379 python examples/sync_web_lock.py

A web app (Flask, Django, any WSGI server with threads) opens one connection at startup
and shares it between its request threads; no async code anywhere.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import foundation_etcd as fe
from foundation_etcd.lowlevel import Op

cluster: fe.sync.Cluster  # opened once per process, at startup


def close_report(request_id: int) -> tuple[int, dict[str, object]]:
    """A view: ``@app.post("/reports/close")`` in Flask. Returns (status, JSON body)."""
    key = cluster.keyspace.key("reports", "closed")
    try:
        with fe.sync.fail_after(10), cluster.lock("reports").acquire() as held:
            kv = cluster.transport.get(key)
            closed = json.loads(kv.value) if kv else []
            closed.append(request_id)
            held.put(key, json.dumps(closed))  # fenced: refused once the lock is lost
            return 200, {"closed": len(closed), "token": held.fencing_token}
    except TimeoutError:
        return 503, {"error": "busy, try again"}
    except fe.LockLostError as exc:  # lost while held: the write was refused
        return 409, {"error": str(exc)}


def main() -> None:
    global cluster
    connection = fe.sync.connect(fe.Config.from_env(), node_id="example-web", hosts_agents=False)
    cluster = connection.open()  # in a web app: at startup (closed at exit)
    cluster.transport.delete(cluster.keyspace.key("reports", "closed"))  # a run of its own
    try:
        with ThreadPoolExecutor(8) as server:  # the server's request threads
            answers = list(server.map(close_report, range(16)))
        statuses = {status for status, _ in answers}
        tokens = [body["token"] for _, body in sorted(answers, key=lambda a: a[1]["closed"])]
        print("statuses:", statuses, "tokens increasing:", tokens == sorted(tokens))
        kv = cluster.transport.get(cluster.keyspace.key("reports", "closed"))
        assert kv is not None
        print("reports closed:", len(json.loads(kv.value)), "of 16")
        with cluster.lock("reports").acquire() as held:
            pass
        try:  # the released handle refuses at once; its token's compare, etcd itself
            held.put(cluster.keyspace.key("reports", "closed"), b"[]")
        except fe.LockLostError:
            stale = Op.put(cluster.keyspace.key("reports", "closed"), b"[]")
            if not cluster.transport.txn([held.guard], [stale]).succeeded:
                print("a write after release is refused by etcd")
    finally:
        connection.close()


if __name__ == "__main__":
    main()
