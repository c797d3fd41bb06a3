"""The harness's exceptions: one base class, and the two failures a test can meet first.

Every error the harness raises about an etcd process is an :class:`EtcdHarnessError`, so a
caller can catch them all; :class:`EtcdStartError` carries the tail of the member's log,
the first thing to read when a member does not come up.
"""

from __future__ import annotations

__all__ = ["EtcdHarnessError", "EtcdNotFoundError", "EtcdStartError"]


class EtcdHarnessError(RuntimeError):
    """The test harness could not find, start or drive an etcd process."""


class EtcdNotFoundError(EtcdHarnessError):
    """No etcd binary was found (see :func:`find_etcd_binary`)."""


class EtcdStartError(EtcdHarnessError):
    """An etcd member exited or did not become healthy in time.

    Attributes:
        log_tail: the last lines of the member's log.
    """

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- last lines of the etcd log ---\n{log_tail}")
        self.log_tail = log_tail
