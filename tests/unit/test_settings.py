"""Settings: every invalid value stops start-up with one line naming it; secrets never show."""

import pytest

from daemon.settings import Settings, SettingsError, load_settings, masked_dump

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("LSTMD_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"LSTMD_MODEL__WINDOW": "0"}, "model.window"),
        ({"LSTMD_MODEL__WINDOW": "sixteen"}, "model.window"),
        ({"LSTMD_MODEL__BATCH_SIZE": "-4"}, "model.batch_size"),
        ({"LSTMD_MODEL__UNITS": "1.5"}, "model.units"),
        ({"LSTMD_MODEL__LEARNING_RATE": "0"}, "model.learning_rate"),
        ({"LSTMD_MODEL__TARGET_INDEX": "[3]"}, "model"),
        ({"LSTMD_STREAM__MAX_KEYS": "-1"}, "stream.max_keys"),
        ({"LSTMD_STREAM__MAX_BATCH_WAIT_MS": "soon"}, "stream.max_batch_wait_ms"),
        ({"LSTMD_STREAM__NORMALISE": "perhaps"}, "stream.normalise"),
        ({"LSTMD_KAFKA__SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol"),
        ({"LSTMD_KAFKA__SESSION_TIMEOUT_MS": "10"}, "kafka.session_timeout_ms"),
        ({"LSTMD_KAFKA__SSL_CAFILE": "/nonexistent/ca.pem"}, "kafka.ssl_cafile"),
        ({"LSTMD_METRICS__PORT": "70000"}, "metrics.port"),
        ({"LSTMD_SNAPSHOT__KEEP": "0"}, "snapshot.keep"),
        ({"LSTMD_HEALTH__STALL_S": "0"}, "health.stall_s"),
        ({"LSTMD_LOG__LEVEL": "LOUD"}, "log.level"),
        # Settings that each look fine but cannot work together (issue 11).
        ({"LSTMD_KAFKA__PREDICTIONS_TOPIC": "lstmd-events"}, "kafka.input_topic"),
        ({"LSTMD_KAFKA__DEAD_LETTER_TOPIC": "lstmd-events"}, "kafka.input_topic"),
        ({"LSTMD_KAFKA__METRICS_TOPIC": "lstmd-events"}, "kafka.input_topic"),
        ({"LSTMD_KAFKA__HEARTBEAT_INTERVAL_MS": "6000"}, "kafka.heartbeat_interval_ms"),
        ({"LSTMD_KAFKA__DEAD_LETTER_MAX_BYTES": "1048576"}, "kafka.dead_letter_max_bytes"),
        ({"LSTMD_KAFKA__MAX_REQUEST_SIZE": "500000"}, "kafka.dead_letter_max_bytes"),
        (
            {"LSTMD_SNAPSHOT__EVERY_STEPS": "0", "LSTMD_SNAPSHOT__EVERY_S": "0"},
            "snapshot.every_steps",
        ),
        ({"LSTMD_MODEL__BATCH_SIZE": "100000", "LSTMD_MODEL__WINDOW": "1000"}, "model.batch_size"),
        ({"LSTMD_STREAM__MAX_KEY_BYTES": "0"}, "stream.max_key_bytes"),
    ],
)
def test_bad_value_names_the_setting_in_one_line(monkeypatch, env, name):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"invalid setting {name}")


@pytest.mark.parametrize(
    ("toml", "name"),
    [
        ("[model]\nunits = 8\nunit = 9\n", "model.unit"),
        ("[modle]\nunits = 8\n", "modle"),
        ("[stream]\nreset_every_steps = -2\n", "stream.reset_every_steps"),
        ("[model]\nwindow = 'x'\n", "model.window"),
        ("[model\nunits = 8\n", "config"),
    ],
)
def test_bad_toml_names_the_setting(tmp_path, toml, name):
    path = tmp_path / "lstmd.toml"
    path.write_text(toml)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"invalid setting {name}")


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match="invalid setting config: file not found"):
        load_settings(tmp_path / "nope.toml")


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    path = tmp_path / "lstmd.toml"
    path.write_text("[model]\nunits = 8\nwindow = 4\n")
    monkeypatch.setenv("LSTMD_MODEL__UNITS", "12")
    settings = load_settings(path)
    assert settings.model.units == 12 and settings.model.window == 4


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(ValueError):
        settings.model.units = 3  # type: ignore[misc]


def test_secrets_are_masked_in_dumps_reprs_and_errors(monkeypatch):
    monkeypatch.setenv("LSTMD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LSTMD_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("LSTMD_KAFKA__SASL_PASSWORD", SECRET)
    monkeypatch.setenv("LSTMD_KAFKA__SSL_PASSWORD", SECRET)
    with pytest.raises(SettingsError) as caught:  # no username: SASL is incomplete
        load_settings()
    assert SECRET not in str(caught.value) and "kafka" in str(caught.value)
    monkeypatch.setenv("LSTMD_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("LSTMD_MODEL__WINDOW", "0")  # another error, secrets still present
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert SECRET not in str(caught.value)
    monkeypatch.delenv("LSTMD_MODEL__WINDOW")
    settings = load_settings()
    assert settings.kafka.sasl_password.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(masked_dump(settings))


def test_the_default_settings_and_a_large_but_sane_batch_are_accepted(monkeypatch):
    defaults = load_settings()
    assert defaults.kafka.dead_letter_max_bytes < defaults.kafka.max_request_size
    assert defaults.stream.max_key_bytes == 256
    monkeypatch.setenv("LSTMD_MODEL__BATCH_SIZE", "1024")
    monkeypatch.setenv("LSTMD_MODEL__WINDOW", "64")
    assert load_settings().model.batch_bytes() < 2**30


def test_derived_feature_settings_default_to_auto_and_refuse_bad_seasons(monkeypatch):
    settings = load_settings()
    assert settings.stream.derived_calendar is True
    assert settings.stream.seasons == "auto" and settings.stream.seasons_tuple() is None
    monkeypatch.setenv("LSTMD_STREAM__SEASONS", "[48, 336]")
    assert load_settings().stream.seasons_tuple() == (48, 336)
    monkeypatch.setenv("LSTMD_STREAM__SEASONS", "[]")
    assert load_settings().stream.seasons_tuple() == ()
    for bad in ("[0]", "[7, 7]", "weekly"):
        monkeypatch.setenv("LSTMD_STREAM__SEASONS", bad)
        with pytest.raises(SettingsError, match=r"stream\.seasons"):
            load_settings()


def test_horizon_defaults_to_one_counts_in_the_shape_and_refuses_bad_values(monkeypatch):
    settings = load_settings()
    assert settings.model.horizon == 1 and settings.model.shape()["horizon"] == 1
    monkeypatch.setenv("LSTMD_MODEL__HORIZON", "3")
    three = load_settings().model
    assert three.horizon == 3 and three.shape()["horizon"] == 3
    # Outputs per timestep grow with H: n_targets x H of the batch's estimated bytes.
    assert three.batch_bytes() - settings.model.batch_bytes() == 2 * 32 * 4 * 4
    for bad in ("0", "-1", "1001", "three"):
        monkeypatch.setenv("LSTMD_MODEL__HORIZON", bad)
        with pytest.raises(SettingsError) as caught:
            load_settings()
        assert str(caught.value).startswith("invalid setting model.horizon")
