"""The check every config refusal test makes: the ConfigError names the offending key.

A service refuses to start on a bad value with ``config KEY: reason``; ``raises_naming``
asserts exactly that form. Shared by the strategy-config tests (``test_config.py``) and the
environment-settings tests (``test_config_settings.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared.domain.errors import ConfigError


def raises_naming(key: str, fn: Callable[[], Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn()
    err = info.value
    assert err.key == key, f"expected the error to name {key!r}, got {err.key!r}: {err}"
    assert str(err) == f"config {key}: {err.reason}"
    assert err.reason
    return err
