"""Ship the serving image to AWS: push to ECR, package model.tar.gz, deploy a SageMaker
real-time endpoint (blue/green, rollback, autoscaling), and invoke it.

Every AWS call goes through boto3 clients built by :mod:`deploy.aws`, so tests point them at
a local moto server (``endpoint_url``) or wrap them in botocore's ``Stubber``. All input is
checked by :mod:`deploy.config` before the first AWS call.
"""
