import re
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
    for act in ("membership", "fencing", "quotas", "failover", "signals"):
        assert act in out.stdout
    # act 5: a node SIGKILLed mid-handler while signals were sent; totals exact afterwards
    assert "ok   every accepted signal counted exactly once, in the order sent" in out.stdout
    assert re.search(
        r"ok   tally-1-\d+, killed mid-handler, delivered again \(attempt [2-9]", out.stdout
    )
    assert "ok   ids sent again are duplicates" in out.stdout
    assert "ok   no dead letter, nothing left waiting" in out.stdout
    assert re.search(r"signals: \d+ sent during a SIGKILL, each counted exactly once", out.stdout)
    act5 = out.stdout[out.stdout.index("== act 5") :]
    stamps = [float(s) for s in re.findall(r"^\[\s*([0-9.]+)s\]", act5, re.MULTILINE)]
    assert stamps[-1] - stamps[0] < 30, "act 5 should take under 30 s"
