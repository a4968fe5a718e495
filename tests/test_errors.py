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
