"""Ship the serving image to AWS: push to ECR, train with it (SageMaker training jobs),
package model.tar.gz, deploy a SageMaker endpoint (real-time, asynchronous or serverless;
blue/green, rollback, autoscaling), invoke it, and run batch transform jobs.

Every AWS call goes through boto3 clients built by :mod:`deploy.aws`, so tests point them at
a local moto server (``endpoint_url``) or wrap them in botocore's ``Stubber``. All input is
checked by :mod:`deploy.config` before the first AWS call.
"""
