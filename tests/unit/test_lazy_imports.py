"""The package root and the pytest plugin import nothing heavy until used (issue 17).

pytest loads the plugin in every run of every project where foundation-etcd is installed,
and importing ``foundation_etcd.testing.plugin`` imports the package root first: both load
names on first use. Their TYPE_CHECKING imports (what type checkers see) and their tables of
where each name lives (what runs) must say the same.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import foundation_etcd
import foundation_etcd.testing

SRC = Path(__file__).resolve().parents[2] / "src" / "foundation_etcd"


def _type_checking_imports(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return {
                alias.asname or alias.name: "." * imp.level + (imp.module or "")
                for imp in node.body
                if isinstance(imp, ast.ImportFrom) and imp.level > 0
                for alias in imp.names
            }
    raise AssertionError(f"no TYPE_CHECKING block in {path}")


@pytest.mark.parametrize(
    ("module", "path"),
    [
        (foundation_etcd, SRC / "__init__.py"),
        (foundation_etcd.testing, SRC / "testing" / "__init__.py"),
    ],
)
def test_lazy_table_matches_the_type_checking_imports(module: object, path: Path) -> None:
    where: dict[str, str] = module._WHERE  # type: ignore[attr-defined]
    assert where == _type_checking_imports(path)
    assert set(where) == set(module.__all__)  # type: ignore[attr-defined]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return set(out.split())


HEAVY = ("grpc", "google.protobuf", "foundation_etcd._transport", "foundation_etcd._agents",
         "anyio", "etcd3aio")  # fmt: skip


def test_plugin_and_root_import_nothing_heavy() -> None:
    loaded = _modules_after("import foundation_etcd.testing.plugin, foundation_etcd")
    heavy = sorted(m for m in loaded if m.startswith(HEAVY))
    assert not heavy, heavy
    assert "foundation_etcd.testing._server" not in loaded


def test_names_load_on_first_use_under_their_public_path() -> None:
    code = textwrap.dedent(
        """
        import foundation_etcd as fe
        assert repr(fe.Lock) == "<class 'foundation_etcd.Lock'>", repr(fe.Lock)
        # one import loads many modules: their names are bound (and published) at once
        assert "Session" in vars(fe) and fe.Session.__module__ == "foundation_etcd"
        assert fe.lowlevel.Transport.__module__ == "foundation_etcd.lowlevel"
        from foundation_etcd import *  # noqa: F403
        assert Config is fe.Config  # noqa: F405
        import foundation_etcd.testing as t
        assert t.EtcdServer.__module__ == "foundation_etcd.testing"
        assert "wait_until" in dir(t) and "connect" in dir(fe)
        """
    )
    assert "grpc" in _modules_after(code)
