"""The benchmarks behind ``scripts/bench.py`` (its docstring has the usage and the method).

Layout:

- ``harness``: settings (``FULL``, ``QUICK``), rows (``Latency``, ``Figure``),
  ``percentile``, the ``Bench`` context, ``Case`` and ``run_rounds`` (the alternating
  raw/library rounds), ``Section``.
- ``raw``: raw etcd requests built by hand, raw leases and watch streams, etcd's JSON
  gateway and its ``/metrics``.
- ``children``: the child programs (``scripts/bench_*.py``) and their JSON-lines protocol.
- one module per section: ``kv``, ``wire``, ``keepalive``, ``watch``, ``registry``,
  ``tooz``, ``election``, ``quotas``, ``runtime``, ``signals``, ``consensus``,
  ``metrics_cost`` (section ``metrics``), ``auth``, ``protection``; each has
  ``section_<name>(bench)`` (``consensus`` measures with ``scripts/bench_state.py`` and
  ``scripts/bench_counter.py``, which also run alone; ``wire`` runs
  ``scripts/bench_wire.py`` once per stack).
- ``report``: the markdown report and ``--write`` below the marker line (with ``--only``,
  the sections run replace theirs and the others are kept).
- ``cli``: ``SECTIONS``, the command line and ``main``.

It imports only public names (``foundation_etcd`` and ``foundation_etcd.lowlevel``). Its
modules import each other as ``benchmarks.*``: ``scripts/`` must be on ``sys.path``
(``scripts/bench.py`` and the child programs that need the package see to that).
"""
