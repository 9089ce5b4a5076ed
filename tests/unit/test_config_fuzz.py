"""Hostile config: any text for any HMM key, any JSON value anywhere in the file, parses or names the key.

Anything but a ConfigError (a TypeError, an OverflowError, a KeyError) would be a crash at start-up
with a traceback instead of the key and the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.config import HmmConfig, parse_strategy_config
from shared.domain.errors import ConfigError
from shared.infra.settings import Settings
from tests.mutations import JSON_VALUES, damaged, places

T = TypeVar("T")
KEYS = HmmConfig.keys()
NUMBERISH = st.sampled_from(["1e400", "-1e400", "nan", "inf", "-inf", "0x10", "1_000", " 3 ", "3.0", "", "٣", "1e-400"])


def outcome(parse: Callable[[], T]) -> T | ConfigError:
    """What ``parse`` gave: its value, or the ConfigError it raised (anything else fails the test as it is)."""
    try:
        return parse()
    except ConfigError as exc:
        return exc


def _accepted(key: str, value: Any) -> None:
    assert value is not None or key == "HMM_COVARIANCE_TYPE", (key, value)
    if isinstance(value, float):
        assert math.isfinite(value), (key, value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), raw=st.text(max_size=30) | NUMBERISH)
def test_any_environment_text_parses_or_names_its_key(key: str, raw: str) -> None:
    got = outcome(lambda: HmmConfig.from_keys({}, {key: raw}))
    if isinstance(got, ConfigError):
        assert got.key in (key, "HMM_MIN_TRAIN_SAMPLES"), (key, raw, got)
    else:
        _accepted(key, got.as_keys()[key])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=JSON_VALUES | NUMBERISH)
def test_any_file_value_parses_or_names_its_key(key: str, value: Any) -> None:
    got = outcome(lambda: HmmConfig.from_keys({key: value}, {}))
    if isinstance(got, ConfigError):
        assert got.key in (f"hmm.{key}", "HMM_MIN_TRAIN_SAMPLES"), (key, value, got)
    else:
        _accepted(key, got.as_keys()[key])


SHIPPED = json.loads((Path(__file__).resolve().parents[2] / "config" / "strategy_config.json").read_text())


PATHS = places(SHIPPED)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=JSON_VALUES, drop=st.booleans())
def test_any_value_anywhere_in_the_strategy_config_parses_or_names_a_key(
    path: tuple[Any, ...], value: Any, drop: bool
) -> None:
    raw = damaged(SHIPPED, path, value, drop)
    got = outcome(lambda: parse_strategy_config(raw, {}))
    if isinstance(got, ConfigError):
        assert got.key, got
        assert got.reason, got


# An environment holds no NUL, and Python reads undecodable bytes in it as surrogates \udc80-\udcff only.
ENV_TEXT = (
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=40)
    | NUMBERISH
    | st.sampled_from(["/nonexistent/\udc80", "\udcff", "redis://h\udc80:1/0", "nats://\udc80"])
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(Settings.ENV_KEYS), raw=ENV_TEXT, user=st.booleans())
def test_any_service_setting_parses_or_names_its_key(key: str, raw: str, user: bool) -> None:
    env = {key: raw}
    if user and key != "NATS_USER":
        env["NATS_USER"] = "svc"  # with its password file missing: that key is named
    got = outcome(lambda: Settings.from_env(env))
    if isinstance(got, ConfigError):
        assert got.key in (key, "NATS_USER", "NATS_PASSWORD_FILE", "REGIMES_NAMESPACE"), (env, got)
