"""The table output never passes a terminal control sequence from etcd; warnings are one line."""

from __future__ import annotations

import json
import logging

import pytest

from foundation_etcd._cli_out import Listing, render, setup_logging


def test_control_characters_from_etcd_values_are_not_printed() -> None:
    hostile = "\x1b[2J\x1b[31mRED\x1b[0m\x07\x9b1m\x00end"
    listing = Listing(
        "NodeList",
        [("NODE", "node"), ("ADDRESS", "address"), ("CAPACITY", "capacity")],
        [{"node": "n1", "address": hostile, "capacity": {"cpu": hostile}}],
        7,
    )
    text = render(listing, "table")
    assert not any(ord(ch) < 0x20 and ch != "\n" for ch in text), repr(text)
    assert not any(0x7F <= ord(ch) < 0xA0 for ch in text), repr(text)
    assert "?[2J?[31mRED?[0m??1m?end" in text
    # JSON keeps every character, escaped
    doc = json.loads(render(listing, "json"))
    assert doc["items"][0]["address"] == hostile


def test_whitespace_is_still_one_line_per_row() -> None:
    listing = Listing("X", [("A", "a")], [{"a": "one\ttwo\nthree\r\nfour"}])
    assert render(listing, "table").splitlines()[1] == "one two three four"


def test_the_report_names_the_session_servers_a_test_used() -> None:
    """A failing test's report attaches the logs of `etcd_tls_server` and `etcd_auth` too."""
    from types import SimpleNamespace

    import pytest

    from foundation_etcd.testing.plugin import _servers_of

    tls, auth_server = object(), object()
    item = SimpleNamespace(
        stash=pytest.Stash(),
        config=SimpleNamespace(stash=pytest.Stash()),
        fixturenames=["etcd_tls_server", "etcd_auth"],
        funcargs={"etcd_tls_server": tls, "etcd_auth": SimpleNamespace(server=auth_server)},
    )
    assert _servers_of(item) == [tls, auth_server]  # type: ignore[arg-type]


def test_without_v_the_librarys_warnings_are_one_prefixed_line_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lib, root = logging.getLogger("foundation_etcd"), logging.getLogger()
    before, root_before = list(lib.handlers), list(root.handlers)
    root.handlers[:] = []  # as in the command line (pytest's own capture is a root handler)
    try:
        setup_logging(0)
        setup_logging(0)  # a second command in the same process: still one line each
        logging.getLogger("foundation_etcd.session").warning("lease %x lost:\n  %s", 255, "gone")
        logging.getLogger("foundation_etcd.watch").info("not shown without -v")
        logging.getLogger("foundation_etcd.cli").error("cannot %s", "go on")
        assert capsys.readouterr().err == (
            "foundation-etcd: warning: lease ff lost: gone\nfoundation-etcd: error: cannot go on\n"
        )
    finally:
        lib.handlers[:] = before
        root.handlers[:] = root_before


def test_setting_up_logging_again_replaces_what_it_set(capsys: pytest.CaptureFixture[str]) -> None:
    """``main`` run twice in one process (no ``-v``, then ``-v``): one line per record."""
    lib, root = logging.getLogger("foundation_etcd"), logging.getLogger()
    before, root_before, level = list(lib.handlers), list(root.handlers), root.level
    log = logging.getLogger("foundation_etcd.session")
    root.handlers[:] = []  # as in the command line (pytest's own capture is a root handler)
    try:
        setup_logging(0)
        setup_logging(0, "demo")  # the last prog wins
        log.warning("one")
        assert capsys.readouterr().err == "demo: warning: one\n"
        setup_logging(1)
        log.warning("two")
        (line,) = capsys.readouterr().err.splitlines()
        assert line.endswith("Z WARNING foundation_etcd.session: two"), line
        setup_logging(0)
        log.warning("three")
        assert capsys.readouterr().err == "foundation-etcd: warning: three\n"
        root.handlers[:] = []
        root.addHandler(logging.NullHandler())  # the application configured logging itself
        setup_logging(0)
        log.warning("four")
        assert capsys.readouterr().err == ""
    finally:
        lib.handlers[:] = before
        root.handlers[:] = root_before
        root.setLevel(level)
