"""How every radfed command ends on an error it expects: ``error: ...`` on stderr and the error's own
exit code (:func:`cdm.errors.exit_code_of`), never a traceback.  One click group class for the
``radfed`` and ``radfed-node`` command trees."""

from __future__ import annotations

import sys

import click

from cdm.errors import RadfedError, exit_code_of

#: what a command reports in one line; anything else is a bug and keeps its traceback
EXPECTED_ERRORS = (RadfedError, FileNotFoundError)


class ErrorReportingGroup(click.Group):
    """A click group that reports radfed's errors as ``error: ...`` with each error's exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exit_code_of(exc))
