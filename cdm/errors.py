"""radfed's errors and exit codes, declared once (like lifelines' ``lifelines.exceptions``).

Every error radfed raises on purpose derives from :class:`RadfedError`; the CLIs, the HTTP API and
the node map an error to an exit code (:func:`exit_code_of`), an HTTP status (:func:`http_status_of`)
or a node's reply -- status, refusal code, the message a requester may read (:func:`reply_of`) --
through the class attributes declared with each error, never through their own tables.

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

from cdm.messages import RefusalCode, ReplyStatus

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
    #: how a node's reply says that this error ended a request (:func:`reply_of`): by default the
    #: node failed (status error, INTERNAL); a requester's mistake is a refusal with its own code
    reply_status: ReplyStatus = ReplyStatus.ERROR
    reply_code: RefusalCode = RefusalCode.INTERNAL

    def reply_message(self) -> str:
        """What a node's reply may say of this error.  By default nothing of its text: an unexpected
        error's message may quote the site's data or paths."""
        return INTERNAL_MESSAGE


class BadInput(RadfedError):
    """Base of the errors that say the input is wrong (a spec, a file, a name, the configuration):
    fix the command line or the file (exit 2), or the request (HTTP 400)."""

    exit_code = EXIT_USAGE
    http_status = 400


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


#: what a node's reply says of an error it did not expect (the site's log has the traceback)
INTERNAL_MESSAGE = "internal error at the node (see the site log)"


def reply_of(exc: BaseException) -> tuple[ReplyStatus, RefusalCode, str]:
    """(status, code, message) of the node's reply to a request that ``exc`` ended: the error's own
    (a refusal, a bad spec, the node's configuration...), else an internal error that says nothing of
    ``exc``.  The node's request paths (node/execute.py, node/plan.py, node/bus_handler.py) answer
    through this one function."""
    if isinstance(exc, RadfedError):
        return exc.reply_status, exc.reply_code, exc.reply_message()
    return ReplyStatus.ERROR, RefusalCode.INTERNAL, INTERNAL_MESSAGE


def unexpected(exc: BaseException) -> bool:
    """Whether ``exc`` is an error the node did not expect (its reply says only INTERNAL_MESSAGE):
    the one kind whose traceback goes to the site's log."""
    return reply_of(exc)[2] == INTERNAL_MESSAGE


class Refusal(RadfedError):
    """A node declines a request: ``code`` is the stable refusal code the requester sees (MIN_CELL,
    MIN_ROWS, NOT_ALLOWED, BAD_SPEC...), ``message`` says why without any row data."""

    exit_code = EXIT_PARTIAL
    http_status = 403
    reply_status = ReplyStatus.REFUSED

    def __init__(self, code: str, message: str):
        self.code, self.message = RefusalCode(code), message  # the one list of codes: an unknown one fails here
        self.reply_code = self.code
        super().__init__(f"{code}: {message}")

    def reply_message(self) -> str:
        return self.message


class RadfedWarning(UserWarning):
    """Base of every warning radfed issues on purpose (a result that is usable but incomplete)."""
