"""radfed's errors and exit codes, declared once (like lifelines' ``lifelines.exceptions``).

Every error radfed raises on purpose derives from :class:`RadfedError`; the CLIs, the HTTP API and
the node map an error to an exit code or an HTTP status through the class attributes here, never
through their own tables.

Exit codes of every ``radfed`` and ``radfed-node`` command (cron and systemd alert on them):

====  ==========  ==============================================================================
code  name        meaning
====  ==========  ==============================================================================
0     OK          everything asked was done
1     FAILED      the command could not do its job (an error; nothing, or not all, was done)
2     USAGE       bad arguments, configuration or input format: fix the command line or file
3     PARTIAL     the command finished, but something was quarantined, missing or refused:
                  look at its summary (nothing was lost: quarantined input is kept)
====  ==========  ==============================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class RadfedError(Exception):
    """Base of every error radfed raises on purpose.  ``exit_code`` is what a CLI exits with when
    this error ends a command; ``http_status`` is what the HTTP API answers.  Each subclass sets the
    two where it is declared (``EXIT_USAGE`` / 400 for bad input or configuration)."""

    exit_code: int = EXIT_FAILED
    http_status: int = 500


def exit_code_of(exc: BaseException) -> int:
    """The exit code of a command that ``exc`` ends: the error's own, ``USAGE`` for a file that is
    not there, ``FAILED`` for anything else."""
    if isinstance(exc, RadfedError):
        return exc.exit_code
    if isinstance(exc, FileNotFoundError):
        return EXIT_USAGE
    return EXIT_FAILED


def http_status_of(exc: BaseException) -> int:
    """The HTTP status the API answers when ``exc`` ends a call (500 for anything unexpected)."""
    return exc.http_status if isinstance(exc, RadfedError) else 500


class Refusal(RadfedError):
    """A node declines a request: ``code`` is the stable refusal code the requester sees (MIN_CELL,
    MIN_ROWS, NOT_ALLOWED, BAD_SPEC...), ``message`` says why without any row data."""

    exit_code = EXIT_PARTIAL
    http_status = 403

    def __init__(self, code: str, message: str):
        from cdm.messages import RefusalCode  # the one list of codes: an unknown one fails here

        self.code, self.message = RefusalCode(code), message
        super().__init__(f"{code}: {message}")


class RadfedWarning(UserWarning):
    """Base of every warning radfed issues on purpose (a result that is usable but incomplete)."""
