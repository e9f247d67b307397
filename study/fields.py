"""Configuration fields: the error every layer raises for a value that is not allowed, and the
rules that say what a field may hold, in a leaf module so that the configuration (`study.config`)
and the model families' settings (`study.models`) check their fields the same way without
importing each other.

    check_fields("train", config, {"batch_size": POSITIVE_INTEGER, "schedule": one_of(("constant", "plateau"))})
    # ConfigError: train.batch_size must be a positive integer, got 0
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the field and what is allowed."""


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# what a field may hold: (test, what the error message says it must be)
POSITIVE_INTEGER = (lambda v: _integer(v) and v >= 1, "a positive integer")
COUNT = (lambda v: _integer(v) and v >= 0, "an integer from 0")
POSITIVE_NUMBER = (lambda v: _number(v) and v > 0, "a positive, finite number")
SHARE = (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]")
TOLERANCE = (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
FACTOR = (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)")
BOOLEAN = (lambda v: isinstance(v, bool), "true or false")
NON_NEGATIVE_NUMBER = (lambda v: _number(v) and v >= 0, "a finite number from 0")


def one_of(options: tuple[str, ...]):
    """The rule of a field that holds one of `options`."""
    return (lambda v: v in options, f"one of {', '.join(options)}")


def check_fields(owner: str, config: Any, rules: dict) -> None:
    """Checks each field of `config` named in `rules` (name -> (test, what it must be)).

    Raises ConfigError: '<owner>.<name> must be <what>, got <value>' for the first that fails."""
    for name, (test, allowed) in rules.items():
        value = getattr(config, name)
        if not test(value):
            raise ConfigError(f"{owner}.{name} must be {allowed}, got {value!r}")
