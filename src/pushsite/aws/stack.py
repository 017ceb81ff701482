"""Stand the stack up: upload the Lambda zip, then create or update the CloudFormation stack.

The zip goes to `s3://<code-bucket>/<prefix>-lambda-<sha256[:16]>.zip`. CloudFormation
compares parameters, not objects: a new build under the same key would leave the function on
the old code. A key derived from the zip's bytes makes every new build a changed `CodeS3Key`
(the function is updated) and the same build the same key (nothing is uploaded, and an
unchanged stack is reported as up to date, not as CloudFormation's "No updates" error).

Without `--code-bucket` the code goes to `<prefix>-code-<account>-<region>`, created when
absent; the stack's own buckets are not used, since the function must exist before the stack.

`stack_env` turns the stack's outputs into the PUSHSITE_* settings that the CLI needs to work
on what the stack holds (`eval "$(pushsite aws env --stack NAME)"`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pushsite.awssdk.client import BackendUrl, aws_errors, error_code, http_status, make_client
from pushsite.errors import ConfigError
from pushsite.state import dynamo_shape as shape

_WAIT = {"Delay": 5, "MaxAttempts": 360}  # up to 30 minutes, as a first stack may take


@dataclass
class StackResult:
    """What `deploy_stack` did and what the stack now offers."""

    action: str  # "created", "updated" or "unchanged"
    code: str  # s3://bucket/key of the function's zip
    uploaded: bool
    outputs: dict[str, str]


def _client(service: str, name: str = "pushsite") -> Any:
    return make_client(service, BackendUrl.parse(f"{service}://{name}", service))


def code_key(prefix: str, zip_path: Path) -> str:
    """The zip's key: named by its bytes, so a new build is a new key."""
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    return f"{prefix}-lambda-{digest[:16]}.zip"


def default_code_bucket(prefix: str) -> str:
    """`<prefix>-code-<account>-<region>`: unique per account and region, like the stack's."""
    sts = _client("sts")
    with aws_errors("AWS STS"):
        account = sts.get_caller_identity()["Account"]
    return f"{prefix}-code-{account}-{sts.meta.region_name}"


def upload_code(bucket: str, key: str, zip_path: Path) -> bool:
    """Put the zip at bucket/key unless it is there; creates the bucket. True if uploaded."""
    from botocore.exceptions import ClientError

    s3 = make_client("s3", BackendUrl.parse(f"s3://{bucket}", "s3"))
    with aws_errors(f"the code bucket {bucket}"):
        try:
            s3.head_object(Bucket=bucket, Key=key)
            return False
        except ClientError as exc:
            if http_status(exc) != 404:
                raise
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if http_status(exc) != 404:
                raise
            region = s3.meta.region_name
            extra = ({} if region == "us-east-1" else
                     {"CreateBucketConfiguration": {"LocationConstraint": region}})
            s3.create_bucket(Bucket=bucket, **extra)
        s3.put_object(Bucket=bucket, Key=key, Body=zip_path.read_bytes())
    return True


def _stack(cloudformation: Any, name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        [stack] = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
            return None
        raise
    if stack["StackStatus"] == "REVIEW_IN_PROGRESS":
        return None
    return dict(stack)


def stack_outputs(name: str) -> dict[str, str]:
    """The stack's outputs by key; ConfigError when there is no such stack."""
    cloudformation = _client("cloudformation", name)
    with aws_errors(f"the CloudFormation stack {name}"):
        stack = _stack(cloudformation, name)
    if stack is None:
        raise ConfigError(f"there is no CloudFormation stack {name!r}: create it with "
                          f"`pushsite aws deploy --stack {name}`")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def deploy_stack(name: str, *, zip_path: Path, code_bucket: str = "", prefix: str = "",
                 parameters: dict[str, str] | None = None) -> StackResult:
    """Upload the zip and create the stack, or update it; waits until CloudFormation is done.

    `parameters` are template parameters to set; on an update, those not given keep the
    values the stack has.
    """
    from botocore.exceptions import ClientError

    from pushsite.aws.template import render_template

    prefix = prefix or name
    template = json.dumps(render_template(stack_prefix=prefix))
    bucket = code_bucket or default_code_bucket(prefix)
    key = code_key(prefix, zip_path)
    uploaded = upload_code(bucket, key, zip_path)
    wanted = {**(parameters or {}), "CodeS3Bucket": bucket, "CodeS3Key": key}
    cloudformation = _client("cloudformation", name)
    what = f"the CloudFormation stack {name}"
    with aws_errors(what):
        existing = _stack(cloudformation, name)
        given = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(wanted.items())]
        common = {"StackName": name, "TemplateBody": template,
                  "Capabilities": ["CAPABILITY_IAM"]}
        try:
            if existing is None:
                cloudformation.create_stack(**common, Parameters=given)
                waiter, action = "stack_create_complete", "created"
            else:
                # keep what was set before; a default needs no keeping (and moto's
                # UsePreviousValue support is partial)
                defaults = {k: str(v.get("Default", "")) for k, v in
                            json.loads(template)["Parameters"].items()}
                kept = [{"ParameterKey": p["ParameterKey"], "UsePreviousValue": True}
                        for p in existing.get("Parameters", [])
                        if p["ParameterKey"] not in wanted
                        and p.get("ParameterValue") != defaults.get(p["ParameterKey"])]
                for indexes in index_steps(cloudformation, name):
                    step = render_template(stack_prefix=prefix, table_indexes=indexes)
                    cloudformation.update_stack(**{**common, "TemplateBody": json.dumps(step)},
                                                Parameters=given + kept)
                    _wait(cloudformation, name, "stack_update_complete", "updated")
                cloudformation.update_stack(**common, Parameters=given + kept)
                waiter, action = "stack_update_complete", "updated"
        except ClientError as exc:
            if "No updates are to be performed" not in str(exc):
                raise
            action = "unchanged"
        else:
            _wait(cloudformation, name, waiter, action)
    return StackResult(action, f"s3://{bucket}/{key}", uploaded, stack_outputs(name))


def _wait(cloudformation: Any, name: str, waiter: str, action: str) -> None:
    from botocore.exceptions import WaiterError

    try:
        cloudformation.get_waiter(waiter).wait(StackName=name, WaiterConfig=_WAIT)
    except WaiterError as exc:
        raise ConfigError(f"the CloudFormation stack {name} was not {action}: "
                          f"{_failure(cloudformation, name)} ({exc}); see its events in the "
                          "CloudFormation console") from exc


def index_steps(cloudformation: Any, name: str) -> list[tuple[str, ...]]:
    """The table's indexes for each update before the full one: CloudFormation creates at
    most one index of a table per update, so a stack made by an older template (by_site and
    by_time only) first gets by_active alone, then the full template adds by_branch."""
    body = cloudformation.get_template(StackName=name)["TemplateBody"]
    if isinstance(body, str):  # boto3 parses a JSON body; YAML stays text
        body = json.loads(body)
    table = body.get("Resources", {}).get("DeploymentsTable", {}).get("Properties", {})
    have = tuple(i["IndexName"] for i in table.get("GlobalSecondaryIndexes", []))
    missing = [index for index in shape.INDEXES if index not in have]
    return [(*have, *missing[:count]) for count in range(1, len(missing))]


def _failure(cloudformation: Any, name: str) -> str:
    """The first failed resource's reason, from the stack's events."""
    try:
        events = cloudformation.describe_stack_events(StackName=name)["StackEvents"]
    except Exception:  # noqa: BLE001 - only a better message is lost
        return "its status is not complete"
    for event in events:
        if str(event.get("ResourceStatus", "")).endswith("FAILED"):
            return f"{event['LogicalResourceId']}: {event.get('ResourceStatusReason', '')}"
    return "its status is not complete"


def stack_env(outputs: dict[str, str]) -> dict[str, str]:
    """The PUSHSITE_* settings that put the CLI on the stack's buckets, table and mirror.

    PUSHSITE_QUEUE is left out: `pushsite serve` runs a deploy worker on its queue, and the
    stack's bundles are the function's to deploy. PUSHSITE_STAGING is where bundles go.
    """
    return {
        "PUSHSITE_STORE": f"s3://{outputs['ContentBucket']}",
        "PUSHSITE_STATE": f"dynamodb://{outputs['Table']}",
        "PUSHSITE_STAGING": f"s3://{outputs['StagingBucket']}",
        "PUSHSITE_MIRROR": f"s3://{outputs['HostingBucket']}",
    }
