import pytest

from wxkf import config as config_mod
from wxkf.errors import ConfigError


def test_demo_config_loads():
    cfg = config_mod.load(env={})
    assert cfg.bind == "127.0.0.1:8000" and cfg.sandbox is True


def test_environment_overrides_the_file():
    cfg = config_mod.load(env={"WXKF_BIND": "0.0.0.0:9000", "WXKF_WEB_WORKERS": "4", "WXKF_TYPING": "false"})
    assert (cfg.bind, cfg.web_workers, cfg.typing) == ("0.0.0.0:9000", 4, False)


def test_every_bad_key_is_named_at_once(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('token = "x"\naes_key = "short"\nbind = "nowhere"\nweb_workers = "many"\ncolour = "blue"\n')
    with pytest.raises(ConfigError) as info:
        config_mod.load(bad, env={"WXKF_REDIS_URL": "mysql://x"})
    text = str(info.value)
    for key in ("token", "aes_key", "bind", "web_workers", "colour", "redis_url"):
        assert f"{key}:" in text


def test_broken_toml_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("token = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        config_mod.load(bad, env={})


def test_secrets_are_masked_when_described():
    described = config_mod.load(env={}).describe()
    assert described["secret"] == "***" and described["aes_key"] == "***" and described["appid"] != "***"
