"""The sdist and the wheel, built as a release would be (issue 17).

``python -m build`` makes the sdist from the checkout and the wheel from that sdist (so a file
the sdist lacks fails the wheel too). The sdist carries the tests, integration tests,
examples, docs and scripts, and the LICENSE; the wheel only the package, its license and
metadata.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
NAME = f"foundation_etcd-{PROJECT['version']}"
OFFLINE = ("No matching distribution", "Could not find a version", "Failed to establish")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install build)")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 and any(m in done.stdout + done.stderr for m in OFFLINE):
        pytest.skip(f"build's isolated environment cannot be installed: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_license_file_matches_the_metadata() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert PROJECT["license"] == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_sdist_carries_tests_docs_examples_scripts(dists: tuple[Path, Path]) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {n.removeprefix(f"{NAME}/") for n in tar.getnames()}
    for expected in (
        "LICENSE",
        "README.md",
        "PYPI.md",
        "Makefile",
        "pyproject.toml",
        "MANIFEST.in",
        "src/foundation_etcd/py.typed",
        "src/foundation_etcd/_transport/_etcd_api.py",
        "tests/conftest.py",
        "tests/test_transport.py",
        "tests/unit/test_kv.py",
        "tests/coexistence_worker.py",
        "integration/conftest.py",
        "integration/docker-compose.yml",
        "docs/design.md",
        "docs/testing.md",
        "scripts/gen_etcd_api.py",
    ):
        assert expected in names, expected
    assert any(n.startswith("examples/") and n.endswith(".py") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith((".venv", ".pytest_cache", "build/"))]


def test_wheel_holds_only_the_package(dists: tuple[Path, Path]) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        metadata = Parser().parsestr(whl.read(f"{NAME}.dist-info/METADATA").decode())
        entry_points = whl.read(f"{NAME}.dist-info/entry_points.txt").decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"foundation_etcd", f"{NAME}.dist-info"}, tops
    for expected in (
        "foundation_etcd/py.typed",
        "foundation_etcd/_transport/_etcd_api.py",
        "foundation_etcd/testing/plugin.py",
        f"{NAME}.dist-info/licenses/LICENSE",
    ):
        assert expected in names, expected
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert metadata["License-Expression"] == "Apache-2.0"
    classifiers = metadata.get_all("Classifier") or []
    for expected in (
        "Typing :: Typed",
        "Framework :: AsyncIO",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ):
        assert expected in classifiers, expected
    # the index's page is PYPI.md: it says how to install and where the docs are, and
    # names no make target or repository path that a reader there cannot open
    description = metadata.get_payload()
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert description == (ROOT / "PYPI.md").read_text(encoding="utf-8")
    assert "pip install foundation-etcd" in description
    assert "make " not in description and "](docs/" not in description
    requires = metadata.get_all("Requires-Dist") or []
    assert not [r for r in requires if r.startswith("etcd3aio") and "extra" not in r]
    assert "foundation_etcd = foundation_etcd.testing.plugin" in entry_points
