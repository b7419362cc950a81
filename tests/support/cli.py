"""Running the command line in-process, as a test sees it: exit code, stdout, stderr."""

from __future__ import annotations

import pytest

from backup.cli import main

__all__ = ["run_cli"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Given pytest's ``capsys`` and the arguments, run ``obs-backup`` in this process;
    return its exit code and what it printed on stdout and on stderr (only this run's).

    ``main`` returns its exit code; argparse's own exits (``--help``, ``--version``)
    raise SystemExit, which is turned into the code it carries.
    """
    capsys.readouterr()  # what earlier steps printed is not this run's
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
