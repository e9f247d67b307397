"""The configuration error every layer raises: a leaf module, so that the configuration
(`study.config`) and the model families (`study.models`) both raise it without importing each other.

    raise ConfigError("train.batch_size must be a positive integer, got 0")
"""


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the field and what is allowed."""
