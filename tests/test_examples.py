"""Every example runs against the test etcd and prints what it promises."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.etcd, pytest.mark.once]

ROOT = Path(__file__).resolve().parent.parent
EXPECT = {
    "membership.py": "Greeter still works alone: hello world",
    "election.py": "stale write accepted? False",
    "quotas.py": "after release: 0 of 2 used",
    "agents.py": "counter-1 running on example-b",
    "signals.py": "totals: [15, 32]",
    "shared_state.py": "total: 500",
    "sync_web_lock.py": "a write after release is refused by etcd",
    "sync_worker_quota.py": "at most 2 ran at once",
}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example(name: str, etcd_endpoints: list[str], etcd_namespace: str) -> None:
    env = dict(
        os.environ,
        FOUNDATION_ETCD_ENDPOINTS=",".join(etcd_endpoints),
        FOUNDATION_ETCD_NAMESPACE=etcd_namespace,
        PYTHONWARNINGS="ignore",
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert EXPECT[name] in out.stdout, out.stdout
    assert len((ROOT / "examples" / name).read_text().splitlines()) <= 80


def _blocks(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL)


# examples that are also a concept page's program: the page shows the file as is, and what it
# prints on an embedded etcd (started by the example itself without FOUNDATION_ETCD_ENDPOINTS)
PAGES = {"signals.py": "signals.md", "shared_state.py": "state.md"}


@pytest.mark.parametrize("name", sorted(PAGES))
def test_example_starts_its_own_etcd_and_is_its_concept_page_block(name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDATION_ETCD_")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(env, PYTHONWARNINGS="ignore"),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    page = (ROOT / "docs" / "concepts" / PAGES[name]).read_text()
    assert _blocks(page, "python")[0] == (ROOT / "examples" / name).read_text()
    assert out.stdout == _blocks(page, "text")[0], out.stdout
