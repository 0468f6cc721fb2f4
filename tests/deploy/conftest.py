from __future__ import annotations

from pathlib import Path

import botocore.endpoint
import pytest

from deploy import package
from deploy.testing import make_model_dir
from tests.deploy.helpers import client


@pytest.fixture
def no_aws_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if botocore sends any HTTP request at all."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("an AWS request was made before validation failed")

    monkeypatch.setattr(botocore.endpoint.Endpoint, "make_request", refuse)


@pytest.fixture
def model_data(moto: str, tmp_path: Path) -> str:  # noqa: F811
    """A packaged (fake) model on moto's S3, and an empty bucket for asynchronous I/O."""
    model, code = make_model_dir(tmp_path)
    s3 = client("s3", moto)
    for bucket in ("models", "async-io"):
        s3.create_bucket(Bucket=bucket)
    return package.upload(s3, package.build(model, tmp_path / "model.tar.gz", code_dir=code),
                          "s3://models/t5")
