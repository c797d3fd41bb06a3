"""Every example runs against the test etcd and prints what it promises."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.etcd

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


def test_signals_example_starts_its_own_etcd_and_is_the_concept_page_block() -> None:
    """Without FOUNDATION_ETCD_ENDPOINTS it starts an embedded etcd; the page shows it as is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDATION_ETCD_")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "signals.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(env, PYTHONWARNINGS="ignore"),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    page = (ROOT / "docs" / "concepts" / "signals.md").read_text()
    assert _blocks(page, "python") == [(ROOT / "examples" / "signals.py").read_text()]
    printed = _blocks(page, "text")[0]
    assert out.stdout == printed, (out.stdout, printed)


def test_shared_state_example_is_the_concept_page_block() -> None:
    """The page shows examples/shared_state.py as is, and what it prints on an embedded etcd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDATION_ETCD_")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "shared_state.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(env, PYTHONWARNINGS="ignore"),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    page = (ROOT / "docs" / "concepts" / "state.md").read_text()
    assert _blocks(page, "python")[0] == (ROOT / "examples" / "shared_state.py").read_text()
    assert out.stdout == _blocks(page, "text")[0], out.stdout
