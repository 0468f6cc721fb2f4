"""One typed settings object: environment, optional YAML file, flags; bad values fail at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serving.settings import ENV_NAMES, Settings, SettingsError, load_settings, load_settings_with_sources
from tests.support import REPO


def test_defaults_and_sagemaker_names():
    s = load_settings({})
    assert s.port == 8080 and s.max_payload_mb == 6.0 and s.program == "inference.py"
    assert {"SAGEMAKER_BIND_TO_PORT", "SAGEMAKER_PROGRAM", "SAGEMAKER_MAX_PAYLOAD_IN_MB"} <= ENV_NAMES


def test_precedence_default_file_env_flag(tmp_path):
    config = tmp_path / "serving.yaml"
    config.write_text("max_batch_size: 8\nMAX_BATCH_DELAY_MS: 5\nwarmup: false\nmax_queue_size: 10\n")
    settings, sources = load_settings_with_sources({"MAX_BATCH_SIZE": "12", "MAX_QUEUE_SIZE": "20"},
                                                   config_file=config, max_queue_size=48)
    assert (settings.max_batch_size, settings.max_batch_delay_ms, settings.warmup, settings.max_queue_size) == \
        (12, 5.0, False, 48)
    assert sources["max_batch_size"] == "env MAX_BATCH_SIZE"
    assert sources["max_batch_delay_ms"] == f"file {config}"
    assert sources["max_queue_size"] == "command line"
    assert sources["request_timeout_s"] == "default"


def test_config_file_from_environment(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("engine: torch\nlength_aware_batching: off\n")
    assert load_settings({"SERVING_CONFIG": str(config)}).length_aware_batching is False


@pytest.mark.parametrize("env,needle", [
    ({"MAX_BATCH_SIZE": "lots"}, "MAX_BATCH_SIZE='lots' is not valid: expected an integer"),
    ({"MAX_BATCH_SIZE": "0"}, "must be >= 1"),
    ({"ENGINE": "tensorrt"}, "choose one of"),
    ({"WARMUP": "maybe"}, "true or false"),
    ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "must be <= 65535"),
])
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert needle in str(info.value)


def test_unknown_or_malformed_file_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_batch_sise: 4\n")
    with pytest.raises(SettingsError, match="unknown key 'max_batch_sise'"):
        load_settings({}, config_file=bad)
    bad.write_text("- a list\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings({}, config_file=bad)
    with pytest.raises(SettingsError, match="config file"):
        load_settings({}, config_file=tmp_path / "missing.yaml")


def test_environment_export_round_trips():
    s = load_settings({}, max_batch_size=7, warmup=False)
    assert load_settings(s.as_environment()) == s


def test_serve_print_config_and_start_failure(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_batch_size: 8\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MAX_BATCH_DELAY_MS": "3"}
    out = subprocess.run([sys.executable, "-m", "serving.cli", "--config", str(config), "--port", "9999",
                          "--print-config"], env=env, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "(file" in lines["MAX_BATCH_SIZE"] and "8" in lines["MAX_BATCH_SIZE"]
    assert "(env MAX_BATCH_DELAY_MS)" in lines["MAX_BATCH_DELAY_MS"]
    assert "(command line)" in lines["SAGEMAKER_BIND_TO_PORT"]
    assert set(lines) == {f.metadata["env"] for f in Settings.__dataclass_fields__.values()}
    bad = subprocess.run([sys.executable, "-m", "serving.cli"], env={**env, "MAX_QUEUE_SIZE": "-1"},
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "MAX_QUEUE_SIZE" in bad.stderr and "Traceback" not in bad.stderr


def test_configuration_docs_are_generated_from_the_settings():
    from serving.settings.doc import markdown_table

    assert (REPO / "docs" / "configuration.md").read_text().strip() == markdown_table().strip(), \
        "docs/configuration.md is stale: run `make docs`"


def test_the_training_section_is_left_to_the_training_entry(tmp_path):
    config = tmp_path / "both.yaml"
    config.write_text("max_batch_size: 4\ntraining:\n  lora_r: 16\n")
    assert load_settings({}, config_file=config).max_batch_size == 4


def test_admin_token_is_refused_when_guessable_and_never_printed(tmp_path):
    for weak in ("short", "x" * 15):
        with pytest.raises(SettingsError, match="ADMIN_TOKEN is not valid: it must be at least 16"):
            load_settings({"ADMIN_TOKEN": weak})
    token = "s3cr3t-admin-token-0123456789"
    assert load_settings({"ADMIN_TOKEN": token}).admin_token == token
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "ADMIN_TOKEN": token}
    out = subprocess.run([sys.executable, "-m", "serving.cli", "--print-config"], env=env, capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert token not in out.stdout and "ADMIN_TOKEN" in out.stdout and "'***'" in out.stdout
    out = subprocess.run([sys.executable, "-m", "serving.cli", "--print-config"], capture_output=True, text=True,
                         env={**env, "ADMIN_TOKEN": "short"}, cwd=REPO, timeout=60)
    assert out.returncode == 2 and "ADMIN_TOKEN is not valid" in out.stderr and "short" not in out.stderr


def test_hot_load_allowlist_defaults():
    from serving.models.adapters.guards import allowed_roots

    assert allowed_roots(load_settings({})) == ()
    assert allowed_roots(load_settings({"SAGEMAKER_MULTI_MODEL": "true"})) == ("/opt/ml/models",)
    assert allowed_roots(load_settings({"ADAPTERS_DIR": "s3://b/adapters/"})) == ("s3://b/adapters/",)
    assert allowed_roots(load_settings({"ADAPTER_URL_ALLOWLIST": " /srv/a, s3://b/x ,", "ADAPTERS_DIR": "/other"})
                         ) == ("/srv/a", "s3://b/x")
    assert allowed_roots(load_settings({"ADAPTER_URL_ALLOWLIST": ""})) == ()


@pytest.mark.parametrize("environ,names", [
    ({"MAX_QUEUE_SIZE": "8", "MAX_ITEMS_PER_REQUEST": "32"}, ["MAX_QUEUE_SIZE=8", "MAX_ITEMS_PER_REQUEST=32"]),
    ({"DEFAULT_MAX_NEW_TOKENS": "600"}, ["DEFAULT_MAX_NEW_TOKENS=600", "MAX_NEW_TOKENS_LIMIT=512"]),
    ({"MAX_TOKENS_IN_FLIGHT": "600"}, ["MAX_TOKENS_IN_FLIGHT=600", "= 640"]),
    ({"SCHEDULER": "continuous", "ENGINE": "ctranslate2"}, ["SCHEDULER=continuous", "ENGINE=ctranslate2"]),
])
def test_settings_that_contradict_each_other_stop_the_start(environ, names):
    with pytest.raises(SettingsError, match="contradict") as info:
        load_settings(environ)
    for name in names:
        assert name in str(info.value)


def test_every_contradiction_is_reported_at_once():
    with pytest.raises(SettingsError) as info:
        load_settings({"MAX_QUEUE_SIZE": "1", "DEFAULT_MAX_NEW_TOKENS": "600"})
    assert str(info.value).count("\n- ") == 2  # the queue and the default length, in one message



def test_serve_stops_on_contradicting_settings_with_the_message(monkeypatch, capsys):
    from serving.cli import serve_main

    monkeypatch.setenv("MAX_QUEUE_SIZE", "4")
    assert serve_main(["--print-config"]) == 2
    assert "MAX_QUEUE_SIZE=4 is below MAX_ITEMS_PER_REQUEST=32" in capsys.readouterr().err
