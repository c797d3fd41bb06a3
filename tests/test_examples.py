"""Every example runs against the test etcd and prints what it promises."""

import os
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
