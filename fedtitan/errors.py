"""User-facing errors: one line saying what is wrong and what would be right."""

from __future__ import annotations

from collections.abc import Iterable


class FedtitanError(Exception):
    """An error caused by user input (config, data, paths).

    The CLI prints ``str(error)`` on one line and exits with status 2; no traceback unless
    ``--debug`` is given.
    """


class DataError(FedtitanError):
    """A dataset is missing, corrupt or inconsistent."""


class ConfigError(FedtitanError):
    """A configuration value is invalid."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``; did you mean 'x'?`` with the choice closest to ``value`` (difflib's ratio of at
    least 0.6), or "" when none is close: the one hint every unknown-name error ends with."""
    import difflib

    close = difflib.get_close_matches(value, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
