"""The errors a run raises that the ``crema`` command turns into one line and an exit status.

Kept apart from :mod:`crema.workflows.run` (which re-exports them) so that the command line can
catch them without importing coffea, the processors and their models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crema.workflows.run import RunReport


class InputError(RuntimeError):
    """An input file is unreadable or lacks a branch the processor needs; the message names it."""


class RunInterrupted(Exception):
    """A run ended by SIGINT/SIGTERM; ``report`` holds what it did (status ``interrupted``)."""

    def __init__(self, report: RunReport, resumable: bool) -> None:
        hint = "; rerun with --resume" if resumable else ""
        super().__init__(f"interrupted: {report.processed_chunks} of {report.total_chunks} chunks done{hint}")
        self.report = report
