"""A griffe extension for the API reference: reST markup in docstrings, shown as Markdown.

The docstrings are Google style with a few reST habits that Markdown does not know:
cross-reference roles (``:class:`~foundation_etcd.Lock```) and the literal-block marker
(``text::`` before an indented example). Roles become code spans (``Lock``; ``~`` drops the
path as in Sphinx); ``text::`` becomes ``text:`` and a line holding only ``::`` goes, the
indented example below staying a code block. Loaded by ``mkdocs.yml``; not a page of the
site (``exclude_docs``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(?m)^([ \t]*)::[ \t]*$|(?<=\S)::[ \t]*$")


def _role(match: re.Match[str]) -> str:
    target = match[2]
    if match[1]:  # ~a.b.C shows C
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _literal(match: re.Match[str]) -> str:
    return "" if match[1] is not None else ":"


def markdown(text: str) -> str:
    """The docstring ``text`` with its reST roles and ``::`` markers made Markdown."""
    return _LITERAL.sub(_literal, _ROLE.sub(_role, text))


class RestToMarkdown(griffe.Extension):
    """Rewrite every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite the docstrings of ``pkg`` and of everything defined in it, in place."""
        todo: list[griffe.Object] = [pkg]
        while todo:
            obj = todo.pop()
            if obj.docstring is not None:
                obj.docstring.value = markdown(obj.docstring.value)
            todo += [m for m in obj.members.values() if isinstance(m, griffe.Object)]
