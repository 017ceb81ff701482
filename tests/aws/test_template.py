"""The CloudFormation template: valid for cfn-lint, and the deployer's role least privilege."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from pushsite.aws.builders import (
    BUILDER_LEASE,
    BUILDER_PROCESSES,
    CONDITION,
    boot_script,
    build_queue_url,
)
from pushsite.aws.mirror import mirror_deployment
from pushsite.aws.stack import index_steps
from pushsite.aws.template import HANDLER, render_template, write_template
from pushsite.errors import ConfigError
from pushsite.model import FileEntry, Manifest, blob_key
from pushsite.stores import open_object_store
from pushsite.stores.local import LocalStore

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


def test_every_bucket_read_by_key_may_be_listed() -> None:
    """On AWS a GET or HEAD of a missing key answers 404 only to a caller that may list the
    bucket, and 403 otherwise. The store's has() and the staging reader treat 404 as "not
    there" and 403 as an error, so every bucket whose objects the role reads is listable."""
    statements = _statements(render_template())
    read = [s for s in statements if "s3:GetObject" in s["Action"]]
    listed = [s for s in statements if "s3:ListBucket" in s["Action"]]
    assert len(read) == 3  # staging, content, hosting
    listable = {_bucket_of(resource) for s in listed for resource in s["Resource"]}
    for statement in read:
        [objects] = statement["Resource"]
        assert _bucket_of(objects, objects=True) in listable, statement["Sid"]


def _bucket_of(resource: Any, objects: bool = False) -> str:
    """One bucket's ARN expression as text, from the bucket's or (objects=True) its keys'."""
    text = json.dumps(resource, sort_keys=True)
    if objects:
        assert '/*"' in text, resource
        text = text.replace('/*"', '"')
    if '{"Fn::GetAtt": [' in text:  # {"Fn::GetAtt": ["X", "Arn"]} is "${X.Arn}"
        name = resource["Fn::GetAtt"][0]
        text = json.dumps({"Fn::Sub": f"${{{name}.Arn}}"})
    return text


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
    # AWS's advice: six times the function's timeout, so a throttled retry is not redelivered
    assert resources["DeployQueue"]["Properties"]["VisibilityTimeout"] >= 6 * function["Timeout"]
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
    assert indexes == {"by_site", "by_time", "by_active", "by_branch"}
    sqs = session.client("sqs", endpoint_url=moto)
    url = sqs.get_queue_url(QueueName="site-bundles")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) >= 5  # AWS's advice for Lambda event sources
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


@pytest.fixture
def moto_with_iam(aws_credentials: None, tmp_path: Path) -> Iterator[str]:
    """A moto server of its own that enforces IAM policies after three bootstrap calls."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    log = (tmp_path / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"moto exited: {(tmp_path / 'moto.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _user_session(iam: Any, name: str, policy: dict[str, Any]) -> boto3.session.Session:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return boto3.session.Session(
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name="us-east-1",
    )


# The S3 operations AWS authorises with each IAM action the role grants (from AWS's "Actions,
# resources and condition keys for Amazon S3"). moto up to 5.2.5 checked these IAM actions;
# from 5.2.6 it checks `s3:<OperationName>` instead (HEAD as `s3:HeadObject`, which is no IAM
# action at all), so the policy moto enforces gets each operation's name beside the action
# that authorises it on AWS, for the same resources. Nothing is granted that AWS would refuse.
_OPERATIONS_AUTHORISED_BY = {
    "s3:GetObject": ("s3:HeadObject",),
    "s3:ListBucket": ("s3:ListObjectsV2", "s3:ListObjects", "s3:HeadBucket"),
    "s3:PutObject": (
        "s3:CreateMultipartUpload", "s3:UploadPart", "s3:CompleteMultipartUpload",
    ),
    "s3:DeleteObject": ("s3:DeleteObjects",),
}


def _as_moto_enforces(document: dict[str, Any]) -> dict[str, Any]:
    """The role's policy with each granted action's S3 operation names added (see above)."""
    statements = []
    for statement in document["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else list(actions)
        for action in list(actions):
            actions += _OPERATIONS_AUTHORISED_BY.get(action, ())
        statements.append({**statement, "Action": actions})
    return {**document, "Statement": statements}


def test_moto_policy_translation_adds_only_operations_of_granted_actions() -> None:
    """The translation never widens a grant: an operation appears only beside its action."""
    document = {"Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"},
        {"Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": "*"},
    ]}
    translated = _as_moto_enforces(document)["Statement"]
    assert translated[0]["Action"] == ["s3:GetObject", "s3:HeadObject"]
    assert translated[0]["Resource"] == "arn:aws:s3:::b/*"
    assert translated[1]["Action"] == ["sqs:SendMessage"]


def test_role_lets_the_s3_backends_work_and_nothing_more(
    moto_with_iam: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The role's resolved policy, enforced by moto (which checks S3 resources, not DynamoDB's
    or SQS's): the content store and the mirror work; writing bundles or code does not."""
    endpoint = moto_with_iam
    bootstrap = boto3.session.Session(region_name="us-east-1").client("iam", endpoint_url=endpoint)
    allow_all = {"Version": "2012-10-17",
                 "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    admin = _user_session(bootstrap, "admin", allow_all)  # the three unchecked calls
    admin_s3 = admin.client("s3", endpoint_url=endpoint)
    admin_s3.create_bucket(Bucket="code")
    admin_s3.put_object(Bucket="code", Key="pushsite-lambda.zip", Body=_tiny_zip())
    cloudformation = admin.client("cloudformation", endpoint_url=endpoint)
    cloudformation.create_stack(
        StackName="pushsite",
        TemplateBody=json.dumps(render_template()),
        Parameters=[{"ParameterKey": "CodeS3Bucket", "ParameterValue": "code"}],
        Capabilities=["CAPABILITY_IAM"],
    )
    [stack] = cloudformation.describe_stacks(StackName="pushsite")["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    resources = cloudformation.list_stack_resources(StackName="pushsite")
    role = next(
        r["PhysicalResourceId"]
        for r in resources["StackResourceSummaries"]
        if r["LogicalResourceId"] == "DeployerRole"
    )
    admin_iam = admin.client("iam", endpoint_url=endpoint)
    document = admin_iam.get_role_policy(RoleName=role, PolicyName="deployer")["PolicyDocument"]
    if isinstance(document, str):  # moto returns the stack's policy as a Python literal
        document = ast.literal_eval(document)
    deployer = _user_session(admin_iam, "deployer", _as_moto_enforces(document))
    credentials = deployer.get_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials.secret_key)
    s3 = deployer.client("s3", endpoint_url=endpoint)

    # The deployer reads a bundle from staging, but never writes or removes one.
    admin_s3.put_object(Bucket=outputs["StagingBucket"], Key="blog/a.tar.gz", Body=b"bundle")
    assert s3.get_object(Bucket=outputs["StagingBucket"], Key="blog/a.tar.gz")["Body"].read()
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=outputs["StagingBucket"], Key="blog/a.tar.gz")
    for bucket in (outputs["StagingBucket"], "code"):
        with pytest.raises(ClientError, match="AccessDenied"):
            s3.put_object(Bucket=bucket, Key="x.tar.gz", Body=b"not allowed")

    # The content store: write, check, read.
    store = open_object_store(f"s3://{outputs['ContentBucket']}?endpoint={endpoint}")
    try:
        store.put(blob_key("ab" * 32), b"hello")
        store.flush()
        assert store.has([blob_key("ab" * 32), blob_key("cd" * 32)]) == {blob_key("ab" * 32)}
        assert store.get(blob_key("ab" * 32)) == b"hello"
    finally:
        store.close()

    # The mirror: list, HEAD and put in the hosting bucket. (moto checks DeleteObjects against
    # the bucket's ARN where AWS checks each object's, so deletions are tested in test_mirror.)
    source = LocalStore.from_url(f"file://{tmp_path / 'store'}")
    try:
        files = {}
        for path, data in {"index.html": b"<p>hi</p>", "old.txt": b"old"}.items():
            digest = hashlib.sha256(data).hexdigest()
            source.put(blob_key(digest), data)
            files[path] = FileEntry(digest, len(data), "text/plain")
        source.flush()
        manifest = Manifest("d1", "blog", 0.0, files=files)
        target = f"s3://{outputs['HostingBucket']}?endpoint={endpoint}"
        assert mirror_deployment(manifest, source, target).uploaded == 2
        manifest.files["copy.txt"] = manifest.files["old.txt"]
        report = mirror_deployment(manifest, source, target, max_delete_share=0)
        assert (report.uploaded, report.unchanged) == (1, 2)
    finally:
        source.close()


# builder workers (aws/builders.py) --------------------------------------------------------------
BUILDER_RESOURCES = ("BuildQueue", "BuildDeadLetterQueue", "BuilderRole", "BuilderInstanceProfile",
                     "BuilderLaunchTemplate", "BuilderGroup", "DeployerBuildGrant")


def test_builders_exist_only_when_asked_for_and_the_function_hands_builds_to_them() -> None:
    template = render_template()
    resources = template["Resources"]
    for name in BUILDER_RESOURCES:
        assert resources[name]["Condition"] == CONDITION, name
    assert template["Conditions"][CONDITION] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "Builders"}, "0"]}]}
    assert template["Parameters"]["Builders"]["Default"] == "0"  # none unless asked for
    variables = resources["DeployerFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["PUSHSITE_BUILD_QUEUE"] == {
        "Fn::If": [CONDITION, build_queue_url(), {"Ref": "AWS::NoValue"}]}
    grant = resources["DeployerBuildGrant"]["Properties"]
    assert grant["Roles"] == [{"Ref": "DeployerRole"}]
    [statement] = grant["PolicyDocument"]["Statement"]
    assert (statement["Action"], statement["Resource"]) == (
        ["sqs:SendMessage"], [{"Fn::GetAtt": ["BuildQueue", "Arn"]}])
    redrive = resources["BuildQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["BuildDeadLetterQueue", "Arn"]}
    assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}


def test_the_builders_role_reaches_only_what_a_build_needs() -> None:
    role = render_template()["Resources"]["BuilderRole"]["Properties"]
    principal = role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert principal == {"Service": "ec2.amazonaws.com"}
    [policy] = role["Policies"]
    by_sid = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert set(by_sid) == {"BuildQueue", "ListStaging", "ReadStaging", "ListContent",
                           "WriteContent", "ListHosting", "MirrorHosting", "State"}
    for statement in by_sid.values():
        assert all("*" not in action for action in statement["Action"]), statement
        for leaf in _walk(statement["Resource"]):
            assert leaf != "*" and not str(leaf).endswith(":*"), statement
    assert by_sid["BuildQueue"]["Resource"] == [{"Fn::GetAtt": ["BuildQueue", "Arn"]}]
    assert by_sid["ReadStaging"]["Action"] == ["s3:GetObject"]  # never writes a bundle
    assert by_sid["MirrorHosting"]["Resource"] == [{"Fn::Sub": "${HostingBucket.Arn}/*"}]
    deletes = [s["Sid"] for s in by_sid.values() if "s3:DeleteObject" in s["Action"]]
    assert deletes == ["MirrorHosting"]  # never a bundle or a blob
    assert "DeployQueue" not in json.dumps(policy)


def test_each_builder_instance_runs_builders_on_the_build_queue(tmp_path: Path) -> None:
    """The boot script is valid bash and starts BUILDER_PROCESSES `pushsite worker --builds`
    on the queue the function hands builds to, with the stack's store and state."""
    script = boot_script()
    path = tmp_path / "boot.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert "ExecStart=/opt/pushsite/bin/pushsite worker --builds" in script
    assert f"PUSHSITE_BUILD_QUEUE=sqs://${{BuildQueue.QueueName}}?visibility={BUILDER_LEASE}" \
        in script
    assert build_queue_url() == {"Fn::Sub": "sqs://${BuildQueue.QueueName}?visibility="
                                             f"{BUILDER_LEASE}"}
    for line in ("PUSHSITE_STORE=s3://${ContentBucket}",
                 "PUSHSITE_STATE=dynamodb://${DeploymentsTable}",
                 "PUSHSITE_MIRROR=s3://${HostingBucket}", "apt-get install",
                 "bubblewrap", 'pushsite==${PushsiteVersion}'):
        assert line in script, line
    units = [f"pushsite-builder@{n}" for n in range(1, BUILDER_PROCESSES + 1)]
    assert f"systemctl enable --now {' '.join(units)}" in script


def test_an_older_stack_gets_the_new_indexes_one_update_at_a_time(moto: str) -> None:
    """CloudFormation creates one index of a table per update: a stack made by the template
    before by_active and by_branch is updated with by_active alone first (stack.py), and the
    full template adds by_branch; each template's attributes are those its keys use."""
    session = boto3.session.Session(region_name="us-east-1")
    s3 = session.client("s3", endpoint_url=moto)
    s3.create_bucket(Bucket="code")
    s3.put_object(Bucket="code", Key="site-lambda.zip", Body=_tiny_zip())
    cloudformation = session.client("cloudformation", endpoint_url=moto)
    common = {"StackName": "site", "Capabilities": ["CAPABILITY_IAM"], "Parameters": [
        {"ParameterKey": "CodeS3Bucket", "ParameterValue": "code"}]}
    older = render_template(stack_prefix="site", table_indexes=("by_site", "by_time"))
    table = older["Resources"]["DeploymentsTable"]["Properties"]
    assert {a["AttributeName"] for a in table["AttributeDefinitions"]} == {
        "pk", "sk", "gsk", "gpk", "apk"}
    cloudformation.create_stack(TemplateBody=json.dumps(older), **common)

    steps = index_steps(cloudformation, "site")
    assert steps == [("by_site", "by_time", "by_active")]
    # moto's CloudFormation leaves a table's indexes as first made, so what is checked is
    # the stack's template, from which index_steps reads what the table has
    cloudformation.update_stack(TemplateBody=json.dumps(render_template(
        stack_prefix="site", table_indexes=steps[0])), **common)
    assert index_steps(cloudformation, "site") == []  # one left: the full update adds it
    cloudformation.update_stack(TemplateBody=json.dumps(render_template(stack_prefix="site")),
                                **common)
    [stack] = cloudformation.describe_stacks(StackName="site")["Stacks"]
    assert stack["StackStatus"] == "UPDATE_COMPLETE", stack.get("StackStatusReason")
    body = cloudformation.get_template(StackName="site")["TemplateBody"]
    assert [i["IndexName"] for i in body["Resources"]["DeploymentsTable"]["Properties"][
        "GlobalSecondaryIndexes"]] == ["by_site", "by_time", "by_active", "by_branch"]
    assert index_steps(cloudformation, "site") == []


def test_a_stack_with_builders_on_moto(moto: str) -> None:
    """With Builders=2 moto's CloudFormation makes the build queue, the function's setting,
    the builders' launch template and their group of two."""
    session = boto3.session.Session(region_name="us-east-1")
    s3 = session.client("s3", endpoint_url=moto)
    s3.create_bucket(Bucket="code")
    s3.put_object(Bucket="code", Key="site-lambda.zip", Body=_tiny_zip())
    ec2 = session.client("ec2", endpoint_url=moto)
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]  # moto's default VPC
    cloudformation = session.client("cloudformation", endpoint_url=moto)
    cloudformation.create_stack(
        StackName="site", TemplateBody=json.dumps(render_template(stack_prefix="site")),
        Parameters=[{"ParameterKey": "CodeS3Bucket", "ParameterValue": "code"},
                    {"ParameterKey": "Builders", "ParameterValue": "2"},
                    {"ParameterKey": "BuilderSubnets", "ParameterValue": subnet}],
        Capabilities=["CAPABILITY_IAM"])

    [stack] = cloudformation.describe_stacks(StackName="site")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["BuildQueueUrl"].endswith("/site-bundles-builds")
    function = session.client("lambda", endpoint_url=moto).get_function(
        FunctionName="site-deployer")["Configuration"]
    assert function["Environment"]["Variables"]["PUSHSITE_BUILD_QUEUE"] == \
        f"sqs://site-bundles-builds?visibility={BUILDER_LEASE}"
    [group] = session.client("autoscaling", endpoint_url=moto).describe_auto_scaling_groups(
    )["AutoScalingGroups"]
    assert (group["MinSize"], group["DesiredCapacity"], group["MaxSize"]) == (2, 2, 2)
    [template] = ec2.describe_launch_templates()["LaunchTemplates"]
    data = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])[
        "LaunchTemplateVersions"][0]["LaunchTemplateData"]
    script = base64.b64decode(data["UserData"]).decode()
    assert "sqs://site-bundles-builds?visibility=" in script
    assert "PUSHSITE_STATE=dynamodb://site" in script and "${" not in script
