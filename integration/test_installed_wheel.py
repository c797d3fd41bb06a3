"""The wheel, installed into a clean virtual environment outside the checkout, runs the demo.

This is what a user gets from ``pip install foundation-etcd``: nothing of the checkout on the
path (the demo runs in an empty directory, its node processes on the new environment's
interpreter), only the package's declared dependencies installed. The etcd binary is the one
the test harness found (``FOUNDATION_ETCD_BIN``), so the wheel's test extra is not needed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundation_etcd.testing import find_etcd_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ("No matching distribution", "Could not find a version", "Failed to establish")


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 and any(m in done.stdout + done.stderr for m in OFFLINE):
        pytest.skip(f"no package index reachable: {done.stderr[-300:]}")
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_wheel_in_a_clean_venv_runs_the_demo(tmp_path: Path) -> None:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install build)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.defpath
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env, timeout=120)
    python = str(venv / "bin" / "python")
    _run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    elsewhere = tmp_path / "user-project"
    elsewhere.mkdir()
    where = _run(
        [python, "-c", "import foundation_etcd, sys; print(foundation_etcd.__file__)"],
        cwd=elsewhere,
        env=env,
        timeout=60,
    )
    assert where.startswith(str(venv)), where  # the installed package, not the checkout
    out = _run(
        [python, "-m", "foundation_etcd.demo"],
        cwd=elsewhere,
        env=dict(env, FOUNDATION_ETCD_BIN=find_etcd_binary()),
        timeout=180,
    )
    assert "OK: every invariant held." in out, out[-3000:]
    assert "FAIL" not in out
