"""Settings: every problem in the environment is one line naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.auth import ApiKeys
from service.core.settings import REDIS_URL_MISSING, SettingsError, load_settings


def refusal() -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return str(caught.value)


def test_a_malformed_number_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANSERVE_JOB_TIMEOUT_S", "abc")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith("WANSERVE_JOB_TIMEOUT_S='abc': ")
    assert "\n" not in str(caught.value)


def test_several_problems_are_one_line_each_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANSERVE_JOB_TIMEOUT_S", "abc")
    monkeypatch.setenv("WANSERVE_DIST_TIMEOUT_S", "-1")
    message = refusal()
    assert "WANSERVE_JOB_TIMEOUT_S=" in message and "WANSERVE_DIST_TIMEOUT_S=" in message
    assert "KEEPALIVE" not in message, "a default computed from a bad field is not a problem of its own"


def test_the_log_level_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANSERVE_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"
    monkeypatch.setenv("WANSERVE_LOG_LEVEL", "loud")
    assert "WANSERVE_LOG_LEVEL='loud'" in refusal()


def test_the_group_keepalive_follows_the_collective_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().keepalive_s == 60
    monkeypatch.setenv("WANSERVE_DIST_TIMEOUT_S", "10")
    assert load_settings().keepalive_s == 5
    monkeypatch.setenv("WANSERVE_KEEPALIVE_S", "30")
    assert "WANSERVE_KEEPALIVE_S" in refusal()


def test_commands_that_need_redis_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANSERVE_REDIS_URL", raising=False)
    with pytest.raises(SettingsError, match="WANSERVE_REDIS_URL is not set"):
        load_settings().require_redis_url()
    assert load_settings(redis_url="redis://h:1/0").require_redis_url() == "redis://h:1/0"
    assert REDIS_URL_MISSING.startswith("WANSERVE_REDIS_URL")


def test_an_empty_or_missing_keys_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# no keys yet\n\n")
    with pytest.raises(SettingsError, match="holds no key"):
        ApiKeys.load(None, empty)
    with pytest.raises(SettingsError, match="WANSERVE_API_KEYS_FILE="):
        ApiKeys.load(None, tmp_path / "absent")
    empty.write_text("# one key\nsk-123\n")
    assert ApiKeys.load(None, empty).enabled
