"""Counting a signal's attempts across crashes: the *started* marker of an agent.

``signals/inflight/{agent}`` holds one JSON object, written only by the live incarnation
(every write is guarded by its incarnation compare), in one of two forms:

* **explicit** ``{"rev": R, "inc": I, "attempt": a}``: incarnation ``I`` started the signal
  whose inbox entry was created at revision ``R``, as attempt ``a``. Written before a head
  is handled when nothing else covers it, or by the acknowledgement of the signal before
  it when that one was already queued behind.
* **standing** ``{"after": R, "inc": I, "attempt": 0}``: the acknowledgement of the signal
  created at ``R`` found the inbox empty, so ``I`` will take its next head without a write
  of its own. Written once, by the first such acknowledgement of the incarnation.

Guarantees:
    * A signal whose handler may have run in an incarnation that ended without committing
      it is delivered again with a higher ``attempt``, so a signal that crashes every
      process that handles it reaches ``signal_max_attempts`` and the dead letters.
    * ``attempt > 1`` means an earlier attempt *may* have run, never more: a standing
      marker cannot tell whether its incarnation had seen the next head, so a head sent
      before the next incarnation came live counts as possibly started (over-counted by
      one at most, per incarnation that ended).
    * An idle agent's next signal costs no marker transaction: the marker is written inside
      acknowledgements, except for an incarnation's first signal and a retry after a failure.

On lease loss: the incarnation stops writing; its marker stays for the next one to read.
"""

from __future__ import annotations

from typing import Any

__all__ = ["attempt_of", "covers_next", "explicit", "standing"]


def attempt_of(
    marker: dict[str, Any], create_revision: int, failures: int, incarnation: int
) -> tuple[int, bool]:
    """The attempt number of the head signal, and whether a marker must be written first.

    Args:
        marker: the marker as last read or written (``{}``: none, or not to be trusted).
        create_revision: the head's inbox entry create revision.
        failures: the handler failures recorded in the head's entry.
        incarnation: the delivering incarnation (its live key's create revision).

    Returns:
        ``(attempt, must_mark)``. A marker of another shape (another client's doing) is
        ignored: the head is then counted from its failures alone.
    """
    inc, marked = marker.get("inc"), marker.get("attempt")
    if not isinstance(inc, int) or not isinstance(marked, int):
        return failures + 1, True
    if isinstance(marker.get("after"), int) and "rev" not in marker:  # standing
        if inc == incarnation:
            return failures + 1, False
        return failures + (2 if create_revision < incarnation else 1), True
    if marker.get("rev") == create_revision and marked > 0:
        if inc == incarnation:
            return marked, False
        return max(marked + 1, failures + 1), True
    return failures + 1, True


def explicit(create_revision: int, incarnation: int, attempt: int) -> dict[str, Any]:
    """The marker of a started signal."""
    return {"rev": create_revision, "inc": incarnation, "attempt": attempt}


def standing(after: int, incarnation: int) -> dict[str, Any]:
    """The marker an acknowledgement that found the inbox empty writes."""
    return {"after": after, "inc": incarnation, "attempt": 0}


def covers_next(marker: dict[str, Any], incarnation: int) -> bool:
    """Whether ``marker`` is already ``incarnation``'s standing marker (nothing to write)."""
    return "rev" not in marker and "after" in marker and marker.get("inc") == incarnation
