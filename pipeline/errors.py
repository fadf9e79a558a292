"""The error every layer may raise for input the user can fix. It lives below `config` so that the layers under
it (storage, the components) can raise it without importing the config package; `pipeline.config` re-exports it."""


class ConfigError(ValueError):
    """A config problem the user can fix; the message says what to change."""
