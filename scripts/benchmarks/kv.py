"""Section ``kv``: single-key get, put and txn through Transport against the raw stubs."""

from __future__ import annotations

import itertools
from typing import Any

from benchmarks.harness import VALUE, Bench, Case, Latency, Row, Step, clocked, run_rounds
from benchmarks.raw import raw_create_txn, rpc
from foundation_etcd.lowlevel import Compare, Op, open_transport

KV_GOAL = 1.15  # library p50 / raw p50 for get, put, txn


async def section_kv(bench: Bench) -> list[Row]:
    """Single-key get, put and create-if-absent txn: Transport against the raw stubs.

    Each operation is compared twice: with the plain raw call (the whole overhead), and
    with the raw call carrying the options the library puts on every request (``hasleader``
    metadata and a deadline), which leaves the library's Python layer alone.
    """
    cfg = bench.config("kv")
    base = f"/{cfg.namespace}/".encode()
    raw_kv = bench.kv
    raw_key, lib_key = base + b"raw/k", base + b"lib/k"
    counter = itertools.count()
    opts: dict[str, Any] = {"metadata": (("hasleader", "true"),), "timeout": cfg.request_timeout}

    def fresh(side: bytes) -> bytes:
        return base + side + b"/txn/%08d" % next(counter)

    try:
        async with open_transport(cfg) as t:
            await t.put(raw_key, VALUE)
            await t.put(lib_key, VALUE)
            lib_steps = {
                "get": clocked(lambda: t.get(lib_key)),
                "put": clocked(lambda: t.put(lib_key, VALUE)),
                "txn": clocked(lambda: lib_txn(t, fresh(b"lib"))),
            }

            def raw_steps(**o: Any) -> dict[str, Step]:
                return {
                    "get": clocked(lambda: raw_kv.Range(rpc.RangeRequest(key=raw_key), **o)),
                    "put": clocked(
                        lambda: raw_kv.Put(rpc.PutRequest(key=raw_key, value=VALUE), **o)
                    ),
                    "txn": clocked(lambda: raw_kv.Txn(raw_create_txn(fresh(b"raw"), VALUE), **o)),
                }

            plain, with_opts = raw_steps(), raw_steps(**opts)
            labels = {
                "get": "get (linearizable range of 1 key)",
                "put": "put (64-byte value)",
                "txn": "txn (create-if-absent + put, new key)",
            }
            cases = [Case(labels[op], plain[op], lib_steps[op]) for op in labels]
            cases += [
                Case(f"{op}: library's Python layer only", with_opts[op], lib_steps[op])
                for op in labels
            ]
            results = await run_rounds(bench, cases)
    finally:
        await bench.delete_prefix(base)
    rows: list[Row] = []
    for label, (raw, lib) in results.items():
        if label in labels.values():
            rows.append(Latency(label, raw, lib, goal=KV_GOAL))
        else:
            note = "raw side carries hasleader metadata + deadline, as the library does"
            rows.append(Latency(label, raw, lib, note=note))
    return rows


async def lib_txn(t: Any, key: bytes) -> Any:
    """The library's create-if-absent transaction (same shape as ``raw_create_txn``)."""
    return await t.txn([Compare.create_revision(key) == 0], [Op.put(key, VALUE)], [Op.get(key)])
