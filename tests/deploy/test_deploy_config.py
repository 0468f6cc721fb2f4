"""Deploy inputs are checked locally, before any AWS call."""

from __future__ import annotations

import botocore.endpoint
import pytest

from deploy import __main__ as cli
from deploy.config import ALLOWED_ENV_NAMES, ENDPOINT_NAME_RE, ConfigError, build_deploy_config, validate_container_env

GOOD = dict(endpoint_name="t5-summarizer",
            image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/t5-serving:abc1234",
            model_data="s3://my-models/t5/0123456789abcdef/model.tar.gz",
            role_arn="arn:aws:iam::123456789012:role/SageMakerExecution")


@pytest.fixture
def no_aws_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail the test if botocore sends any HTTP request at all."""
    calls: list = []

    def refuse(self, *args, **kwargs):
        calls.append(args)
        raise AssertionError("an AWS request was made before validation failed")

    monkeypatch.setattr(botocore.endpoint.Endpoint, "make_request", refuse)
    return calls


def test_good_inputs_build_a_config() -> None:
    cfg = build_deploy_config(**GOOD, env_pairs=["MAX_BATCH_SIZE=8", "BASE_MODEL_ID=x/y"])
    assert cfg.env == {"SAGEMAKER_PROGRAM": "inference.py", "MAX_BATCH_SIZE": "8",
                       "BASE_MODEL_ID": "x/y"}
    assert cfg.instance_count == 1 and cfg.scaling.min_instances == 1
    assert cfg.scaling.max_instances == 2 and cfg.scaling.enabled


def test_missing_inputs_are_all_named(aws_env) -> None:  # noqa: F811
    with pytest.raises(ConfigError) as exc:
        build_deploy_config()
    msg = str(exc.value)
    for name in ("ENDPOINT_NAME", "IMAGE_URI", "MODEL_DATA", "SAGEMAKER_ROLE_ARN", "--role-arn"):
        assert name in msg


def test_inputs_come_from_the_environment(aws_env, monkeypatch) -> None:  # noqa: F811
    for key, env in (("endpoint_name", "ENDPOINT_NAME"), ("image_uri", "IMAGE_URI"),
                     ("model_data", "MODEL_DATA"), ("role_arn", "SAGEMAKER_ROLE_ARN")):
        monkeypatch.setenv(env, GOOD[key])
    monkeypatch.setenv("INSTANCE_COUNT", "2")
    monkeypatch.setenv("INSTANCE_TYPE", "ml.c5.2xlarge")
    cfg = build_deploy_config()
    assert (cfg.endpoint_name, cfg.instance_count, cfg.instance_type) == (
        "t5-summarizer", 2, "ml.c5.2xlarge")
    # A flag beats the environment.
    assert build_deploy_config(instance_count="3", max_instances="4").instance_count == 3


@pytest.mark.parametrize("field,value,needle", [
    ("role_arn", "SageMakerExecution", "role ARN"),
    ("role_arn", "arn:aws:iam::12345:role/x", "role ARN"),
    ("image_uri", "t5-serving", "image URI"),
    ("image_uri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/t5-serving", "image URI"),
    ("model_data", "/tmp/model.tar.gz", "model data"),
    ("model_data", "s3://bucket/model.zip", "model data"),
    ("endpoint_name", "bad_name!", "endpoint name"),
    ("endpoint_name", "x" * 64, "endpoint name"),
])
def test_bad_formats_are_rejected(field: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_deploy_config(**{**GOOD, field: value})


def test_bad_instance_settings() -> None:
    with pytest.raises(ConfigError, match="instance type"):
        build_deploy_config(**GOOD, instance_type="m5.xlarge")
    with pytest.raises(ConfigError, match="INSTANCE_COUNT"):
        build_deploy_config(**GOOD, instance_count="0")
    with pytest.raises(ConfigError, match="within MIN_INSTANCES"):
        build_deploy_config(**GOOD, instance_count="3", max_instances="2")
    assert not build_deploy_config(**GOOD, instance_count="3", max_instances="0").scaling.enabled


def test_env_typo_fails_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"MAX_BATCH_SIZ \(did you mean MAX_BATCH_SIZE\?\)"):
        build_deploy_config(**GOOD, env_pairs=["MAX_BATCH_SIZ=8"])


def test_env_values_are_checked_by_the_servers_own_parser() -> None:
    with pytest.raises(ConfigError, match="MAX_BATCH_SIZE"):
        validate_container_env({"MAX_BATCH_SIZE": "0"})
    with pytest.raises(ConfigError, match="DEVICE"):
        validate_container_env({"DEVICE": "tpu"})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_deploy_config(**GOOD, env_pairs=["MAX_BATCH_SIZE"])
    # Every name the server reads is accepted.
    assert "MAX_BATCH_DELAY_MS" in ALLOWED_ENV_NAMES and "SAGEMAKER_PROGRAM" in ALLOWED_ENV_NAMES


def test_names_are_stable_for_the_same_inputs_and_change_with_them() -> None:
    a = build_deploy_config(**GOOD)
    b = build_deploy_config(**GOOD, poll_s="1", timeout_s="60", smoke_text="hi")
    c = build_deploy_config(**GOOD, env_pairs=["MAX_BATCH_SIZE=4"])
    d = build_deploy_config(**{**GOOD, "endpoint_name": "e" * 63})
    assert a.resource_name() == b.resource_name()  # waiting knobs are not part of a model
    assert a.resource_name() != c.resource_name()
    assert a.resource_name("etag1") != a.resource_name("etag2")
    for name in (a.resource_name(), d.resource_name()):
        assert len(name) <= 63 and ENDPOINT_NAME_RE.match(name)


def test_cli_fails_before_any_aws_call(aws_env, monkeypatch, capsys, no_aws_calls) -> None:  # noqa: F811
    args = ["deploy", "--endpoint", GOOD["endpoint_name"], "--image-uri", GOOD["image_uri"],
            "--model-data", GOOD["model_data"], "--role-arn", GOOD["role_arn"]]
    # Bad env name.
    assert cli.main(args + ["--env", "MAX_BATCH=4"]) == 2
    assert "unknown container environment variable" in capsys.readouterr().err
    # No region.
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert cli.main(args) == 2
    assert "no AWS region" in capsys.readouterr().err
    # No credentials.
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "no AWS credentials" in err and "Traceback" not in err
    # Missing role.
    assert cli.main(args[:-2]) == 2
    assert "SAGEMAKER_ROLE_ARN" in capsys.readouterr().err
    assert no_aws_calls == []
