"""A Celery-style worker reserving quota, through the blocking API.

Run against any etcd: FOUNDATION_ETCD_ENDPOINTS=127.0.0.1:2379 python examples/sync_worker_quota.py

Each task reserves one GPU of the tenant's quota for as long as it runs: however many
worker threads (or worker processes, on however many machines) take tasks, at most the
limit run at once, and a worker that crashes frees its GPU when its lease expires.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import foundation_etcd as fe

running, peak, guard = 0, 0, threading.Lock()


def render(cluster: fe.sync.Cluster, job: int) -> str:
    """A task: ``@app.task`` in Celery; the worker pool calls it in its threads."""
    global running, peak
    with cluster.quotas.reserve({"gpu": 1}) as reservation:  # waits for a free GPU (FIFO)
        with guard:
            running += 1
            peak = max(peak, running)
        time.sleep(0.1)  # the work; a long task calls fe.sync.checkpoint() now and then
        fe.sync.checkpoint()  # raises LeaseLostError if the reservation went with the lease
        with guard:
            running -= 1
        return f"job {job} done under reservation {reservation.reservation_id}"


def main() -> None:
    cfg = fe.Config.from_env()
    with fe.sync.connect(cfg, node_id="example-worker", hosts_agents=False) as cluster:
        cluster.quotas.set_limit("gpu", 2)  # an administrative write
        with ThreadPoolExecutor(6) as pool:  # six worker threads, two GPUs
            results = list(pool.map(lambda job: render(cluster, job), range(12)))
        print(len(results), "jobs done; at most", peak, "ran at once")
        usage = cluster.quotas.open_usage("gpu")
        print(f"after the jobs: {usage.used} of {usage.limit} used")


if __name__ == "__main__":
    main()
