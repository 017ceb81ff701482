"""The CloudFormation template: valid for cfn-lint, and the deployer's role least privilege."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest

from pushsite.aws.template import HANDLER, render_template, write_template
from pushsite.errors import ConfigError

CFN_LINT = Path(sys.executable).with_name("cfn-lint")


def _statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    role = template["Resources"]["DeployerRole"]["Properties"]
    return [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]


def _walk(value: Any) -> list[Any]:
    """Every leaf of a JSON value (strings inside intrinsics included)."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _walk(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _walk(item)]
    return [value]


def test_generated_template_passes_cfn_lint(tmp_path: Path) -> None:
    path = write_template(tmp_path / "pushsite.json", stack_prefix="blog")
    result = subprocess.run(
        [str(CFN_LINT), "--include-checks", "I", "--", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(path.read_text())["Parameters"]["QueueName"]["Default"] == "blog-bundles"


def test_cfn_lint_catches_a_broken_template(tmp_path: Path) -> None:
    """The lint test above could not pass by accident: a real mistake makes cfn-lint fail."""
    template = render_template()
    template["Resources"]["DeployerFunction"]["Properties"]["Runtime"] = "python2.9"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(template))
    result = subprocess.run(
        [str(CFN_LINT), "--", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "python2.9" in result.stdout


def test_role_has_no_wildcard_actions_and_scoped_resources() -> None:
    statements = _statements(render_template())
    assert statements
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        assert all("*" not in action for action in actions), statement
        assert statement["Resource"], statement
        assert "*" not in statement["Resource"], statement
        for leaf in _walk(statement["Resource"]):
            # Object statements end in "/*" (the objects of one bucket); nothing else is open.
            assert leaf != "*" and not str(leaf).endswith(":*"), statement


def test_each_service_reaches_only_its_own_resources() -> None:
    by_sid = {s["Sid"]: s for s in _statements(render_template())}
    assert by_sid["ReadQueue"]["Resource"] == [{"Fn::GetAtt": ["DeployQueue", "Arn"]}]
    assert by_sid["State"]["Resource"] == [
        {"Fn::GetAtt": ["DeploymentsTable", "Arn"]},
        {"Fn::Sub": "${DeploymentsTable.Arn}/index/*"},
    ]
    assert "dynamodb:Scan" not in by_sid["State"]["Action"]
    assert by_sid["WriteContent"]["Resource"] == [{"Fn::Sub": "${ContentBucket.Arn}/*"}]
    # The deployer never writes bundles: it only reads and removes them.
    assert "s3:PutObject" not in by_sid["ReadStaging"]["Action"]
    actions = {a for s in by_sid.values() for a in s["Action"]}
    assert all(a.split(":")[0] in {"logs", "sqs", "s3", "dynamodb"} for a in actions)


def test_bundles_in_staging_reach_the_function_through_the_queue() -> None:
    resources = render_template()["Resources"]
    notification = resources["StagingBucket"]["Properties"]["NotificationConfiguration"]
    [queue_config] = notification["QueueConfigurations"]
    assert queue_config["Event"] == "s3:ObjectCreated:*"
    assert queue_config["Filter"]["S3Key"]["Rules"] == [{"Name": "suffix", "Value": ".tar.gz"}]
    assert queue_config["Queue"] == {"Fn::GetAtt": ["DeployQueue", "Arn"]}
    redrive = resources["DeployQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    function = resources["DeployerFunction"]["Properties"]
    assert (function["Handler"], function["Runtime"], function["Timeout"]) == (
        HANDLER,
        "python3.11",
        900,
    )
    assert resources["DeployQueue"]["Properties"]["VisibilityTimeout"] >= function["Timeout"]
    mapping = resources["DeployQueueMapping"]["Properties"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    table = resources["DeploymentsTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]] == [
        ("pk", "HASH"),
        ("sk", "RANGE"),
    ]
    assert {a["AttributeType"] for a in table["AttributeDefinitions"]} == {"S"}


@pytest.mark.parametrize("prefix", ["", "Upper", "-dash", "x" * 21, "a_b"])
def test_bad_stack_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError, match="stack prefix"):
        render_template(stack_prefix=prefix)


def test_template_creates_a_working_stack_on_moto(moto: str) -> None:
    """moto's CloudFormation resolves every reference and builds the resources it describes."""
    session = boto3.session.Session(region_name="us-east-1")
    s3 = session.client("s3", endpoint_url=moto)
    s3.create_bucket(Bucket="code")
    s3.put_object(Bucket="code", Key="site-lambda.zip", Body=_tiny_zip())
    cloudformation = session.client("cloudformation", endpoint_url=moto)
    cloudformation.create_stack(
        StackName="site",
        TemplateBody=json.dumps(render_template(stack_prefix="site")),
        Parameters=[
            {"ParameterKey": "CodeS3Bucket", "ParameterValue": "code"},
            {"ParameterKey": "HostingBucketName", "ParameterValue": "www.example.com"},
        ],
        Capabilities=["CAPABILITY_IAM"],
    )

    [stack] = cloudformation.describe_stacks(StackName="site")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["HostingBucket"] == "www.example.com"
    assert outputs["StagingBucket"] == "site-staging-123456789012-us-east-1"
    table = session.client("dynamodb", endpoint_url=moto).describe_table(TableName="site")
    assert [k["AttributeName"] for k in table["Table"]["KeySchema"]] == ["pk", "sk"]
    indexes = {i["IndexName"] for i in table["Table"]["GlobalSecondaryIndexes"]}
    assert indexes == {"by_site", "by_time"}
    sqs = session.client("sqs", endpoint_url=moto)
    url = sqs.get_queue_url(QueueName="site-bundles")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 3
    assert redrive["deadLetterTargetArn"].endswith(":site-bundles-dead")
    function = session.client("lambda", endpoint_url=moto).get_function(
        FunctionName="site-deployer"
    )["Configuration"]
    assert (function["Handler"], function["Runtime"], function["Timeout"]) == (
        HANDLER,
        "python3.11",
        900,
    )
    assert function["Environment"]["Variables"]["PUSHSITE_STATE"] == "dynamodb://site"


def _tiny_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pushsite/__init__.py", "")
    return buffer.getvalue()
