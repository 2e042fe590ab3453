"""User-facing errors: one line saying what is wrong and what would be right."""


class FedtitanError(Exception):
    """An error caused by user input (config, data, paths).

    The CLI prints ``str(error)`` on one line and exits with status 2; no traceback unless
    ``--debug`` is given.
    """


class DataError(FedtitanError):
    """A dataset is missing, corrupt or inconsistent."""


class ConfigError(FedtitanError):
    """A configuration value is invalid."""
