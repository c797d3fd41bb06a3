import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_and_checks_its_invariants() -> None:
    """`make demo` end to end: embedded etcd, node processes, SIGSTOP and SIGKILL, exit 0."""
    out = subprocess.run(
        [sys.executable, "-m", "foundation_etcd.demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    assert "OK: every invariant held." in out.stdout
    assert "FAIL" not in out.stdout
    for act in ("membership", "fencing", "quotas", "failover"):
        assert act in out.stdout
