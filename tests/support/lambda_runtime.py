"""The parts of AWS that moto does not play, played as AWS plays them.

- `apply_bucket_notifications`: moto's CloudFormation creates the staging bucket but does not
  apply its NotificationConfiguration, so the test applies the template's own (moto's S3 then
  sends real events to the stack's queue).
- `LambdaEmulator`: the SQS event source mapping (BatchSize 1, ReportBatchItemFailures) and the
  python3.11 runtime: the zip the stack's function names is fetched from S3, unpacked
  read-only, and run by a bare Python (-S) that sees only it and what the runtime ships
  (boto3, botocore, ...), with the function's environment from the stack.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from pushsite.aws.template import render_template

RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
_DRIVER = """
import json, sys, time
from pushsite.aws.handler import handler
class Context:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds
    def get_remaining_time_in_millis(self):
        return max(0, int((self.end - time.monotonic()) * 1000))
event = json.load(sys.stdin)
print(json.dumps(handler(event, Context(float(sys.argv[1])))))
"""


def runtime_packages(folder: Path) -> Path:
    """A folder holding (links to) what Lambda's Python runtime ships besides the stdlib."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_PACKAGES:
        origin = Path(importlib.import_module(name).__file__ or "")
        source = origin.parent if origin.name == "__init__.py" else origin
        link = folder / source.name
        if not link.exists():
            link.symlink_to(source)
    return folder


def apply_bucket_notifications(endpoint: str, stack: str, prefix: str = "") -> None:
    """Apply the template's StagingBucket notification to the bucket moto's stack made."""
    session = boto3.session.Session(region_name="us-east-1")
    outputs = stack_outputs(endpoint, stack)
    resources = render_template(stack_prefix=prefix or stack)["Resources"]
    wanted = resources["StagingBucket"]["Properties"]["NotificationConfiguration"]
    sqs = session.client("sqs", endpoint_url=endpoint)
    arn = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"],
                                   AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    configs = [{**config, "QueueArn": arn} for config in wanted["QueueConfigurations"]]
    for config in configs:
        config.pop("Queue")
        config["Events"] = [config.pop("Event")]
        config["Filter"] = {"Key": {"FilterRules": config["Filter"]["S3Key"]["Rules"]}}
    session.client("s3", endpoint_url=endpoint).put_bucket_notification_configuration(
        Bucket=outputs["StagingBucket"],
        NotificationConfiguration={"QueueConfigurations": configs})


def stack_outputs(endpoint: str, stack: str) -> dict[str, str]:
    cloudformation = boto3.client("cloudformation", endpoint_url=endpoint,
                                  region_name="us-east-1")
    [found] = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in found["Outputs"]}


@dataclass
class LambdaEmulator:
    """Runs the stack's function on its queue's messages, as Lambda would."""

    endpoint: str
    stack: str
    folder: Path
    seconds: float = 120.0  # what each invocation's context has left at its start
    invocations: list[dict[str, Any]] = field(default_factory=list)

    def _session(self) -> Any:
        return boto3.session.Session(region_name="us-east-1")

    def code(self) -> Path:
        """The function's zip (as the stack's parameters name it), unpacked read-only."""
        cloudformation = self._session().client("cloudformation", endpoint_url=self.endpoint)
        [found] = cloudformation.describe_stacks(StackName=self.stack)["Stacks"]
        params = {p["ParameterKey"]: p["ParameterValue"] for p in found["Parameters"]}
        target = self.folder / "code" / params["CodeS3Key"].removesuffix(".zip")
        if not target.exists():
            s3 = self._session().client("s3", endpoint_url=self.endpoint)
            body = s3.get_object(Bucket=params["CodeS3Bucket"], Key=params["CodeS3Key"])
            with zipfile.ZipFile(io.BytesIO(body["Body"].read())) as archive:
                archive.extractall(target)
            for path in target.rglob("*"):
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        return target

    def environment(self) -> dict[str, str]:
        function = stack_outputs(self.endpoint, self.stack)["Function"]
        lam = self._session().client("lambda", endpoint_url=self.endpoint)
        config = lam.get_function_configuration(FunctionName=function)
        variables = dict(config["Environment"]["Variables"])
        variables["PUSHSITE_HOME"] = str(self.folder / "tmp" / "pushsite")  # Lambda's /tmp
        keep = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PATH", "LANG")
        return {**{k: os.environ[k] for k in keep if k in os.environ}, **variables,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
                "PYTHONPATH": f"{self.code()}{os.pathsep}"
                              f"{runtime_packages(self.folder / 'runtime')}"}

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-S", "-c", _DRIVER, str(self.seconds)], input=json.dumps(event),
            capture_output=True, text=True, env=self.environment(), timeout=self.seconds + 30,
            cwd=self.folder)
        assert result.returncode == 0, result.stderr
        response: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        self.invocations.append({"event": event, "response": response,
                                 "stderr": result.stderr})
        return response

    def drain(self, limit: int = 20) -> int:
        """Deliver the queue's messages one by one until it is empty; returns how many."""
        sqs = self._session().client("sqs", endpoint_url=self.endpoint)
        queue = stack_outputs(self.endpoint, self.stack)["QueueUrl"]
        done = 0
        while done < limit:
            response = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1,
                                           WaitTimeSeconds=1,
                                           MessageSystemAttributeNames=["All"])
            messages = response.get("Messages", [])
            if not messages:
                return done
            [message] = messages
            event = {"Records": [{
                "messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"], "attributes": message["Attributes"],
                "messageAttributes": {}, "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs", "awsRegion": "us-east-1"}]}
            failures = self.invoke(event).get("batchItemFailures", [])
            assert not failures, self.invocations[-1]["stderr"]
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            done += 1
        raise AssertionError(f"the queue did not empty after {limit} messages")
