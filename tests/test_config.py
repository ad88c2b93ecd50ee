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


def test_a_production_config_that_forgets_the_token_does_not_start(tmp_path):
    """The demo token is published in this repository: it must never be a silent default."""
    prod = tmp_path / "prod.toml"
    prod.write_text('aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF1"\nappid = "wx1234567890abcdef"\n'
                    'secret = "s3cret"\n')
    with pytest.raises(ConfigError) as info:
        config_mod.load(prod, env={})
    assert "token:" in str(info.value)


REAL = {"WXKF_SANDBOX": "false", "WXKF_TOKEN": "realtoken123",
        "WXKF_AES_KEY": "zyxwvutsrqponmlkjihgfedcba9876543210ZYXWVUT",
        "WXKF_APPID": "wx1234567890abcdef", "WXKF_SECRET": "s3cret",
        "WXKF_CORPID": "ww1234567890abcdef", "WXKF_KF_SECRET": "kfs3cret", "WXKF_KF_TOKEN": "realkftoken",
        "WXKF_KF_AES_KEY": "zyxwvutsrqponmlkjihgfedcba9876543210ZYXWVUT"}


@pytest.mark.parametrize("key", ["token", "aes_key", "appid", "secret", "corpid", "kf_secret", "kf_token",
                                 "kf_aes_key"])
def test_demo_credentials_refuse_to_start_outside_the_sandbox(key):
    with pytest.raises(ConfigError) as info:
        config_mod.load(env=dict(REAL, **{f"WXKF_{key.upper()}": config_mod.DEMO[key]}))
    assert f"{key}: still the demo value" in str(info.value)
    assert str(info.value).count("demo value") == 1


def test_the_demo_wecom_keys_emptied_switch_the_channel_off():
    cfg = config_mod.load(env=dict(REAL, WXKF_CORPID="", WXKF_KF_SECRET="", WXKF_KF_TOKEN="", WXKF_KF_AES_KEY=""))
    assert not cfg.wecom_enabled
    assert config_mod.load(env=REAL).wecom_enabled


@pytest.mark.parametrize("raw, problem", [("-2", "must be positive"), ("all", "expected a number")])
def test_model_gpu_layers_takes_a_count_or_minus_one_for_all(raw, problem):
    assert config_mod.load(env={"WXKF_MODEL_GPU_LAYERS": "-1"}).model_gpu_layers == -1
    assert config_mod.load(env={"WXKF_MODEL_GPU_LAYERS": "12"}).model_gpu_layers == 12
    assert config_mod.load(env={}).model_gpu_layers == 0
    with pytest.raises(ConfigError, match=problem):
        config_mod.load(env={"WXKF_MODEL_GPU_LAYERS": raw})
