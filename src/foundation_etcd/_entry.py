"""The ``foundation-etcd`` command's entry point (``[project.scripts]`` in pyproject.toml).

Loading the command line takes most of a second (gRPC, protobuf): a Ctrl-C in that time
ends the command as one during its run does, quietly with status 130, not with a traceback.
"""

from __future__ import annotations


def main() -> int:
    """Load the command line and run it; see :func:`foundation_etcd.cli.main`."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        return 130
    return run()
