"""Section ``tooz``: tooz group join, when tooz is installed."""

from __future__ import annotations

from benchmarks.harness import Bench, Figure, Row


async def section_tooz(bench: Bench) -> list[Row]:
    """The tooz group join, when tooz is importable (it is not a dependency)."""
    try:
        import tooz  # noqa: F401
    except ImportError:
        return [Figure("tooz group join", None, None, "", 0, note="not installed")]
    return [Figure("tooz group join", None, None, "", 0, note="installed; not measured yet")]
