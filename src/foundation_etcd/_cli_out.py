"""Output of the command line: aligned tables or stable JSON, once or watched (``-w``).

Every listing is a :class:`Listing`: a ``kind``, the store revision it was read at, and
items that are JSON objects with fixed field names (documented in ``docs/cli.md``).
``-o table`` prints the columns aligned under a header; ``-o json`` prints::

    {"kind": "NodeList", "revision": 42, "items": [{...}, ...]}

With ``-w`` the listing is read again whenever etcd's revision moves (checked twice a
second) and printed again when it changed: as a table after a ``# revision R at T`` line,
as JSON one compact document per line (JSON Lines), until Ctrl-C.

Like the command-line modules, it uses the public API only.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import select
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio

from foundation_etcd import EtcdError, EtcdUnavailableError, lowlevel

__all__ = ["WATCH_POLL", "Listing", "add_output", "render", "setup_logging", "show", "table"]

WATCH_POLL = 0.5  # seconds between revision checks of ``-w``


@dataclass
class Listing:
    """One listing: what ``-o json`` prints, and how ``-o table`` lays it out.

    Attributes:
        kind: the JSON ``kind`` (``NodeList``, ...).
        columns: ``(header, field)`` pairs of the table, in order.
        items: the JSON objects, one per row.
        revision: the store revision the listing was read at (0: not from one read).
        extra: more top-level JSON fields.
        sections: a listing of listings (``Status``): its JSON has a field per section
            (the section's items) instead of ``items``, its table a block per section.
        title: a line printed above the table.
    """

    kind: str
    columns: Sequence[tuple[str, str]]
    items: list[dict[str, Any]]
    revision: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Listing] = field(default_factory=dict)
    title: str = ""

    def as_json(self) -> dict[str, Any]:
        """The JSON document: ``kind``, ``revision``, ``items`` and any extra fields."""
        out: dict[str, Any] = {"kind": self.kind, "revision": self.revision}
        if self.sections:
            out.update({name: part.items for name, part in self.sections.items()})
        else:
            out["items"] = self.items
        return {**out, **self.extra}

    def rows(self) -> list[list[str]]:
        """The table's cells, as text."""
        return [[_cell(item.get(f)) for _, f in self.columns] for item in self.items]


# C0 and C1 control characters (but the whitespace that ``split`` collapses) shown as "?"
_CONTROLS = {c: "?" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if chr(c) not in "\t\n\r"}


def _cell(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        text = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    elif isinstance(value, list | tuple | set | frozenset):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    # one line per row, and nothing a terminal would act on (a value from etcd may hold
    # escape sequences that clear or repaint the operator's screen)
    return " ".join(text.translate(_CONTROLS).split())


def table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """Print rows aligned under the header (the last column unpadded)."""
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)


def render(listing: Listing, output: str, *, compact: bool = False) -> str:
    """The text ``-o output`` prints for ``listing``."""
    if output == "json":
        if compact:
            return json.dumps(listing.as_json(), separators=(",", ":"), sort_keys=True, default=str)
        return json.dumps(listing.as_json(), indent=2, sort_keys=True, default=str)
    buf = io.StringIO()
    if listing.title:
        print(listing.title, file=buf)
    if listing.sections:
        for name, part in listing.sections.items():
            print(f"\n{name.upper().replace('_', ' ')} ({part.title or len(part.items)})", file=buf)
            if part.items:
                table([h for h, _ in part.columns], part.rows(), out=buf)
    else:
        table([h for h, _ in listing.columns], listing.rows(), out=buf)
    return buf.getvalue().rstrip("\n")


def add_output(cmd: argparse.ArgumentParser, *, watch: bool = True) -> None:
    """Add ``-o/--output table|json`` (and ``-w/--watch``) to a listing command."""
    cmd.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="default: table"
    )
    if watch:
        cmd.add_argument(
            "-w", "--watch", action="store_true", help="print again on every change (Ctrl-C ends)"
        )


async def show(
    transport: lowlevel.Transport,
    args: argparse.Namespace,
    build: Callable[[], Awaitable[Listing]],
) -> int:
    """Print ``build()`` once, or, with ``-w``, again each time it changes (until Ctrl-C)."""
    output = getattr(args, "output", "table")
    if not getattr(args, "watch", False):
        print(render(await build(), output), flush=True)
        return 0
    seen_rev = -1
    last = ""
    while True:
        try:
            rev = (await transport.status()).revision
        except EtcdError as exc:  # name what stopped answering, as a connect would
            where = ", ".join(transport.config.endpoints)
            raise EtcdUnavailableError(f"etcd at {where} stopped answering ({exc})") from exc
        if rev != seen_rev:
            seen_rev = rev
            listing = await build()
            same = _unrevised(listing)  # what changed, not when: a revision alone is no change
            text = render(same, output, compact=True)
            if text != last:
                last = text
                if output == "table":
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    print(f"# revision {listing.revision or rev} at {stamp}")
                    print(text, flush=True)
                else:
                    print(render(listing, output, compact=True), flush=True)
        if _reader_gone():  # nothing written while nothing changes: no EPIPE to say it
            raise BrokenPipeError("standard output was closed")
        await anyio.sleep(WATCH_POLL)


def _reader_gone() -> bool:
    """Whether standard output is a pipe whose reader went away (``-w | head -1``)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False  # not a file descriptor (a test's buffer), or no poll here
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


def _unrevised(listing: Listing) -> Listing:
    """``listing`` without the revisions it was read at."""
    parts = {name: _unrevised(part) for name, part in listing.sections.items()}
    return dataclasses.replace(listing, revision=0, sections=parts)


class _OneLine(logging.Formatter):
    """``{prog}: warning: msg``: a record as one line, as the command's own errors read."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self._prog = prog

    def format(self, record: logging.LogRecord) -> str:
        """The record's level (lower case) and message, no traceback, on one line."""
        message = " ".join(record.getMessage().split())
        return f"{self._prog}: {record.levelname.lower()}: {message}"


class _Stderr(logging.Handler):
    """Records on the ``sys.stderr`` of the moment (by default warnings, one line each)."""

    def __init__(self, prog: str, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.setFormatter(_OneLine(prog))

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record's line to stderr (as it is now: a test may have replaced it)."""
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # a closed stream: as logging's own handlers, never raise
            self.handleError(record)


def setup_logging(verbosity: int, prog: str = "foundation-etcd") -> None:
    """``-v``: the library's logs on stderr with UTC timestamps (``-vv``: debug too).

    One format for the command line and the demo: ``2026-12-01T18:02:57.123Z INFO name: msg``.
    Without ``-v``, the library's warnings and errors (a lost session lease, a watch that
    stopped) still reach stderr, one line each, as the command's own errors do:
    ``{prog}: warning: msg``; not when the application configured logging itself (a
    handler on the root logger). Called again in one process (a test, an application
    running the command line's ``main``), it replaces what it set before: never two
    lines for one record.
    """
    lib, root = logging.getLogger("foundation_etcd"), logging.getLogger()
    for logger in (lib, root):
        for old in [h for h in logger.handlers if isinstance(h, _Stderr)]:
            logger.removeHandler(old)
    if verbosity <= 0:
        if not root.handlers:
            lib.addHandler(_Stderr(prog))
        return
    handler = _Stderr(prog, logging.DEBUG)
    fmt = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s")
    fmt.datefmt, fmt.converter = "%Y-%m-%dT%H:%M:%S", time.gmtime
    handler.setFormatter(fmt)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
