import pytest

from foundation_etcd.lowlevel import Compare, Op, prefix_end


def test_compare_builders() -> None:
    c = Compare.create_revision("k") == 0
    assert (c.key, c.target, c.op, c.operand) == (b"k", "create", "==", 0)
    assert (Compare.mod_revision(b"k") < 5).op == "<"
    assert (Compare.version("k") > 1).op == ">"
    assert (Compare.value("k") != "x").operand == b"x"
    assert (Compare.lease("k") == 7).target == "lease"
    ranged = Compare.create_revision("p/", range_end=prefix_end(b"p/")) < 9
    assert ranged.range_end == b"p0"


def test_compare_type_errors() -> None:
    with pytest.raises(TypeError):
        _ = Compare.value("k") == 3
    with pytest.raises(TypeError):
        _ = Compare.version("k") == "3"
    with pytest.raises(TypeError):
        _ = Compare.version("k") == True  # noqa: E712


def test_ops() -> None:
    assert Op.get("p/", prefix=True).range_end == b"p0"
    assert Op.delete("p/", prefix=True).range_end == b"p0"
    assert Op.put("k", "v", lease=3).lease == 3
    with pytest.raises(ValueError, match="not both"):
        Op.get("k", prefix=True, range_end="z")
    with pytest.raises(TypeError):
        Op.put(1, "v")  # type: ignore[arg-type]
    t = Op.txn([Compare.version("k") == 0], [Op.put("k", "v")])
    assert t.failure == ()
