"""Yes/no settings from the environment refuse a typo instead of reading it as "off"."""
import pytest
from django.core.exceptions import ImproperlyConfigured

from config.settings import env_bool


@pytest.mark.parametrize("raw, expected", [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
                                           ("0", False), ("False", False), ("no", False), ("off", False)])
def test_the_yes_and_no_words_are_read(monkeypatch, raw, expected):
    monkeypatch.setenv("TB_FLAG", raw)
    assert env_bool("TB_FLAG", default=not expected) is expected


def test_unset_or_empty_is_the_default(monkeypatch):
    monkeypatch.delenv("TB_FLAG", raising=False)
    assert env_bool("TB_FLAG", default=True) is True
    monkeypatch.setenv("TB_FLAG", "  ")
    assert env_bool("TB_FLAG") is False


@pytest.mark.parametrize("typo", ["ture", "yess", "of", "enabled", "2"])
def test_a_typo_stops_the_start_naming_the_variable(monkeypatch, typo):
    monkeypatch.setenv("TB_FLAG", typo)
    with pytest.raises(ImproperlyConfigured, match="TB_FLAG"):
        env_bool("TB_FLAG")
