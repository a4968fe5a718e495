"""One error hierarchy (cdm/errors.py): every exception class radfed declares derives from
RadfedError (warnings from RadfedWarning), and its exit code and HTTP status are read from it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from cdm.errors import (EXIT_FAILED, EXIT_PARTIAL, EXIT_USAGE, RadfedError, RadfedWarning, Refusal, exit_code_of,
                        http_status_of)


def declared_exceptions() -> list[type]:
    found = []
    for package in ("cdm", "node", "coordinator"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(info.name)
            found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                      if issubclass(cls, BaseException) and cls.__module__ == module.__name__]
    return found


def test_every_declared_exception_is_a_radfed_error_or_warning():
    classes = declared_exceptions()
    assert len(classes) >= 25
    stray = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, (RadfedError, RadfedWarning))]
    assert stray == []


def test_exit_codes_and_statuses_come_from_the_error():
    from cdm.spec import SpecError
    from coordinator.service import SubmitError
    from coordinator.store import AuthError
    from node.config import ConfigError

    assert exit_code_of(SpecError([("", "bad")])) == EXIT_USAGE and http_status_of(SpecError([("", "bad")])) == 400
    assert exit_code_of(ConfigError("x")) == EXIT_USAGE
    assert http_status_of(SubmitError("x")) == 400 and http_status_of(AuthError("x")) == 401
    assert exit_code_of(Refusal("MIN_CELL", "small")) == EXIT_PARTIAL and http_status_of(Refusal("NOT_ALLOWED", "b")) == 403
    assert exit_code_of(FileNotFoundError("x")) == EXIT_USAGE
    assert exit_code_of(KeyError("x")) == EXIT_FAILED and http_status_of(KeyError("x")) == 500
    with pytest.raises(ValueError):  # the builtin bases are kept: existing `except ValueError` still catch
        raise SpecError([("", "bad")])


def test_a_node_reply_is_read_from_the_error_and_says_nothing_of_an_unexpected_one():
    """node/execute.py, node/plan.py and node/bus_handler.py answer through cdm.errors.reply_of: a
    refusal keeps its code and message, a bad spec is refused BAD_SPEC, the node's own configuration
    is an error that says so, a forged envelope is BAD_SIGNATURE, a stale request keeps its code; any
    other error is INTERNAL and its text (which may quote the site's data) never reaches the reply."""
    from cdm.errors import INTERNAL_MESSAGE, reply_of, unexpected
    from cdm.spec import SpecError
    from cdm.wire import EnvelopeError, StaleRequest, WireError
    from node.config import ConfigError

    assert reply_of(Refusal("MIN_CELL", "fewer than 5")) == ("refused", "MIN_CELL", "fewer than 5")
    assert reply_of(SpecError([("analysis.type", "unknown")])) == ("refused", "BAD_SPEC", "analysis.type: unknown")
    assert reply_of(SpecError([("x", "y" * 5000)]))[2] == ("x: " + "y" * 5000)[:2000]
    assert reply_of(ConfigError("[policy] k: not a number")) == (
        "error", "INTERNAL", "this node's configuration is invalid: [policy] k: not a number")
    assert reply_of(EnvelopeError("bad signature")) == ("error", "BAD_SIGNATURE", "request rejected: bad signature")
    assert reply_of(StaleRequest("REPLAYED", "same nonce")) == ("refused", "REPLAYED", "request not run: same nonce")
    secret = "patient 4711 has value 13.2"
    for exc in (KeyError(secret), WireError(secret), RadfedError(secret)):
        status, code, message = reply_of(exc)
        assert (status, code, message) == ("error", "INTERNAL", INTERNAL_MESSAGE) and secret not in message
        assert unexpected(exc)
    assert not unexpected(Refusal("MIN_CELL", "x")) and not unexpected(ConfigError("x"))


def test_a_missing_site_or_researcher_is_404_at_the_api_and_a_usage_error_in_the_cli():
    from coordinator.store import NotFound, StoreError

    assert issubclass(NotFound, StoreError)
    assert http_status_of(NotFound("no site 'x'")) == 404 and exit_code_of(NotFound("no site 'x'")) == EXIT_USAGE
