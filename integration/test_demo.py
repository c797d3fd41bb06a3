import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_and_checks_its_invariants() -> None:
    """`make demo` end to end: embedded etcd, node processes, a SIGKILL, exit code 0."""
    out = subprocess.run(
        [sys.executable, "-m", "foundation_etcd.demo", "--ttl", "2"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK:" in out.stdout
    assert "sees node alpha removed" in out.stdout
