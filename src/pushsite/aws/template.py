"""The CloudFormation template for pushsite on AWS, built as a dict and written as JSON.

JSON because CloudFormation reads it as well as YAML, and it keeps PyYAML out of the product.
What it makes:

    StagingBucket --ObjectCreated *.tar.gz--> DeployQueue --(maxReceiveCount)--> DeadLetterQueue
                                                  │  event source mapping, ReportBatchItemFailures
                                                  v
    DeployerFunction (pushsite.aws.handler.handler, python3.11, 900 s) with DeployerRole
        reads bundles from StagingBucket, writes blobs and manifests to ContentBucket,
        state to DeploymentsTable (keys pk/sk, indexes by_site, by_time, by_active and
        by_branch, as state/dynamodb.py uses them), and mirrors the live site to HostingBucket.
    With Builders > 0 (aws/builders.py): BuildQueue, and EC2 builders running `pushsite worker
        --builds` on it; the function hands them the bundles whose site has a build command.

The role is least privilege: each statement names only the actions the deployer performs on
only the resources above (no "*" action, no "*" resource). Names are parameters; a bucket name
left empty becomes `<prefix>-<role>-<account>-<region>`, which is unique per account and region
and known before the bucket exists (the queue policy must name the staging bucket's ARN before
the bucket can be created with its notification, or CloudFormation finds a cycle).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pushsite.aws.builders import (
    CONDITION,
    build_queue_url,
    builder_conditions,
    builder_parameters,
    builder_resources,
)
from pushsite.errors import ConfigError
from pushsite.state import dynamo_shape as shape

HANDLER = "pushsite.aws.handler.handler"
RUNTIME = "python3.11"
FUNCTION_TIMEOUT = 900  # seconds, Lambda's maximum: large sites take a while
# AWS advises a visibility timeout of six times the function timeout for SQS event sources.
QUEUE_VISIBILITY_TIMEOUT = 6 * FUNCTION_TIMEOUT
BUNDLE_SUFFIX = ".tar.gz"
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,19}$")

Json = dict[str, Any]
# Buckets and the table keep the sites and their history when the stack goes; queues and logs
# hold nothing that outlives a deployment.
_RETAIN = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}
_ON_DELETE = {"DeletionPolicy": "Delete", "UpdateReplacePolicy": "Delete"}


def _ref(name: str) -> Json:
    return {"Ref": name}


def _arn(resource: str) -> Json:
    return {"Fn::GetAtt": [resource, "Arn"]}


def _bucket_name(param: str, role: str, prefix: str) -> Json:
    """The parameter's value, or a name unique per account and region when it is empty."""
    generated = {"Fn::Sub": f"{prefix}-{role}-${{AWS::AccountId}}-${{AWS::Region}}"}
    return {"Fn::If": [f"{param}Given", _ref(param), generated]}


def _bucket_arn(param: str, role: str, prefix: str, suffix: str = "") -> Json:
    """An ARN built from the bucket's name, so it can be named before the bucket exists."""
    return {
        "Fn::Sub": [
            "arn:${AWS::Partition}:s3:::${Name}" + suffix,
            {"Name": _bucket_name(param, role, prefix)},
        ]
    }


def _keys(hash_key: str, range_key: str) -> list[Json]:
    return [
        {"AttributeName": hash_key, "KeyType": "HASH"},
        {"AttributeName": range_key, "KeyType": "RANGE"},
    ]


def _statement(sid: str, actions: list[str], resources: list[Any]) -> Json:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}


def _private_bucket(name: Json, **extra: Any) -> Json:
    properties: Json = {
        "BucketName": name,
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        },
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
            ]
        },
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
    }
    properties.update(extra)
    return {"Type": "AWS::S3::Bucket", **_RETAIN, "Properties": properties}


def _parameters(prefix: str) -> Json:
    def text(description: str, default: str = "", pattern: str = "") -> Json:
        param: Json = {"Type": "String", "Default": default, "Description": description}
        if pattern:
            param["AllowedPattern"] = pattern
        return param

    def bucket(description: str) -> Json:
        return text(f"{description}; empty: generated", "", f"^$|{_BUCKET}")

    return {
        "StagingBucketName": bucket("Bucket where bundles wait"),
        "ContentBucketName": bucket("Bucket for blobs and manifests"),
        "HostingBucketName": bucket("Bucket the live site is mirrored to"),
        "TableName": text("DynamoDB table for sites, deployments, aliases, logs", f"{prefix}"),
        "QueueName": text("SQS queue of new bundles", f"{prefix}-bundles"),
        "FunctionName": text("The deployer Lambda function", f"{prefix}-deployer"),
        "CodeS3Bucket": {
            "Type": "String",
            "AllowedPattern": _BUCKET,
            "Description": "Bucket holding the zip from `pushsite aws package` (required)",
        },
        "CodeS3Key": text("Key of that zip", f"{prefix}-lambda.zip"),
        "Architecture": {
            "Type": "String",
            "Default": "x86_64",
            "AllowedValues": ["x86_64", "arm64"],
            "Description": "Must match `pushsite aws package --platform`",
        },
        "MemorySize": {
            "Type": "Number",
            "Default": 1769,  # one full vCPU; compression is CPU-bound
            "MinValue": 256,
            "MaxValue": 10240,
            "Description": "Lambda memory in MB (CPU grows with it)",
        },
        # AWS advises at least 5 for a Lambda event source: a message may be received by a
        # poller while the function is throttled, which counts without a real attempt.
        "MaxReceiveCount": {
            "Type": "Number",
            "Default": 5,
            "MinValue": 5,
            "MaxValue": 1000,
            "Description": "Attempts before a bundle's message moves to the dead-letter queue",
        },
        "MaxConcurrency": {
            "Type": "Number",
            "Default": 10,
            "MinValue": 2,
            "MaxValue": 1000,
            "Description": "Most deployer invocations the queue starts at once",
        },
        "BundleRetentionDays": {
            "Type": "Number",
            "Default": 14,
            "MinValue": 1,
            "Description": "Days a bundle stays in staging",
        },
        **builder_parameters(),  # builder workers for sites with a build (aws/builders.py)
    }


def _state_statement() -> Json:
    """The table's item actions (the deployer's and the builders')."""
    return _statement(
        "State",
        [
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
            "dynamodb:Query",
            "dynamodb:BatchGetItem",
            "dynamodb:BatchWriteItem",
            # TransactWriteItems is authorized by the item actions it performs.
            "dynamodb:ConditionCheckItem",
        ],
        [_arn("DeploymentsTable"), {"Fn::Sub": "${DeploymentsTable.Arn}/index/*"}],
    )


def _policy(prefix: str) -> Json:
    staging_bucket = _bucket_arn("StagingBucketName", "staging", prefix)
    staging = _bucket_arn("StagingBucketName", "staging", prefix, "/*")
    content_bucket = _arn("ContentBucket")
    content_objects = {"Fn::Sub": "${ContentBucket.Arn}/*"}
    hosting_bucket = _arn("HostingBucket")
    hosting_objects = {"Fn::Sub": "${HostingBucket.Arn}/*"}
    return {
        "Version": "2012-10-17",
        "Statement": [
            _statement(
                "Logs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                [{"Fn::Sub": "${DeployerLogGroup.Arn}"}],
            ),
            _statement(
                "ReadQueue",
                [
                    "sqs:GetQueueUrl",  # the queue backend resolves its URL from the name
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:ChangeMessageVisibility",
                    # a deploy cut short by Lambda's deadline re-queues itself to resume
                    "sqs:SendMessage",
                ],
                [_arn("DeployQueue")],
            ),
            # Read a bundle (never write or delete one: the bucket's lifecycle rule expires
            # them after BundleRetentionDays, and a kept bundle lets a deploy resume).
            # ListBucket makes a bundle deleted before its event is handled a 404 (skipped)
            # rather than a 403 (an error, retried until the dead-letter queue).
            _statement("ListStaging", ["s3:ListBucket"], [staging_bucket]),
            _statement("ReadStaging", ["s3:GetObject"], [staging]),
            # ListBucket makes a missing key a 404 instead of a 403 (the store's has()).
            _statement("ListContent", ["s3:ListBucket"], [content_bucket]),
            _statement(
                "WriteContent",
                ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                [content_objects],
            ),
            _statement("ListHosting", ["s3:ListBucket"], [hosting_bucket]),
            _statement(
                "MirrorHosting",
                ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                [hosting_objects],
            ),
            _state_statement(),
        ],
    }


def _resources(prefix: str, indexes: tuple[str, ...]) -> Json:
    staging_name = _bucket_name("StagingBucketName", "staging", prefix)
    return {
        "DeadLetterQueue": {
            "Type": "AWS::SQS::Queue",
            **_ON_DELETE,
            "Properties": {
                "QueueName": {"Fn::Sub": "${QueueName}-dead"},
                "MessageRetentionPeriod": 1_209_600,  # 14 days, SQS's maximum
            },
        },
        "DeployQueue": {
            "Type": "AWS::SQS::Queue",
            **_ON_DELETE,
            "Properties": {
                "QueueName": _ref("QueueName"),
                "MessageRetentionPeriod": 345_600,  # 4 days: a bundle older than that is stale
                "VisibilityTimeout": QUEUE_VISIBILITY_TIMEOUT,
                "RedrivePolicy": {
                    "deadLetterTargetArn": _arn("DeadLetterQueue"),
                    "maxReceiveCount": _ref("MaxReceiveCount"),
                },
            },
        },
        "DeployQueuePolicy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [_ref("DeployQueue")],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "StagingBucketEvents",
                            "Effect": "Allow",
                            "Principal": {"Service": "s3.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": _arn("DeployQueue"),
                            "Condition": {
                                "ArnEquals": {
                                    "aws:SourceArn": _bucket_arn(
                                        "StagingBucketName", "staging", prefix
                                    )
                                },
                                "StringEquals": {"aws:SourceAccount": _ref("AWS::AccountId")},
                            },
                        }
                    ],
                },
            },
        },
        "StagingBucket": {
            **_private_bucket(
                staging_name,
                LifecycleConfiguration={
                    "Rules": [
                        {
                            "Id": "ExpireBundles",
                            "Status": "Enabled",
                            "ExpirationInDays": _ref("BundleRetentionDays"),
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                        }
                    ]
                },
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {
                            "Event": "s3:ObjectCreated:*",
                            "Queue": _arn("DeployQueue"),
                            "Filter": {
                                "S3Key": {"Rules": [{"Name": "suffix", "Value": BUNDLE_SUFFIX}]}
                            },
                        }
                    ]
                },
            ),
            "DependsOn": "DeployQueuePolicy",
        },
        "ContentBucket": _private_bucket(
            _bucket_name("ContentBucketName", "content", prefix),
            LifecycleConfiguration={
                "Rules": [
                    {
                        "Id": "AbortUploads",
                        "Status": "Enabled",
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                    }
                ]
            },
        ),
        # Private: serve it through a CDN with origin access control, or open it with a
        # bucket policy of your own if you want the S3 website endpoint.
        "HostingBucket": _private_bucket(
            _bucket_name("HostingBucketName", "hosting", prefix),
            WebsiteConfiguration={"IndexDocument": "index.html", "ErrorDocument": "404.html"},
        ),
        "DeploymentsTable": {
            "Type": "AWS::DynamoDB::Table",
            **_RETAIN,
            "Properties": {
                "TableName": _ref("TableName"),
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": shape.table_attributes(indexes),
                "KeySchema": _keys("pk", "sk"),
                # As state/dynamodb.py creates them (state/dynamo_shape.py): a site's
                # deployments, all of them, those in flight (sparse), a site's branch.
                "GlobalSecondaryIndexes": [shape.index(name) for name in indexes],
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                # delivery records expire (state.DELIVERY_RETENTION, state/dynamodb.py)
                "TimeToLiveSpecification": {"AttributeName": "expires", "Enabled": True},
            },
        },
        "DeployerLogGroup": {
            "Type": "AWS::Logs::LogGroup",
            **_ON_DELETE,
            "Properties": {
                "LogGroupName": {"Fn::Sub": "/aws/lambda/${FunctionName}"},
                "RetentionInDays": 30,
            },
        },
        "DeployerRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                "Policies": [{"PolicyName": "deployer", "PolicyDocument": _policy(prefix)}],
            },
        },
        "DeployerFunction": {
            "Type": "AWS::Lambda::Function",
            "DependsOn": "DeployerLogGroup",
            "Properties": {
                "FunctionName": _ref("FunctionName"),
                "Handler": HANDLER,
                "Runtime": RUNTIME,
                "Architectures": [_ref("Architecture")],
                "MemorySize": _ref("MemorySize"),
                "Timeout": FUNCTION_TIMEOUT,
                "Role": _arn("DeployerRole"),
                "Code": {"S3Bucket": _ref("CodeS3Bucket"), "S3Key": _ref("CodeS3Key")},
                "Environment": {
                    # The settings of config.py, plus where bundles wait and the mirror.
                    "Variables": {
                        "PUSHSITE_HOME": "/tmp/pushsite",  # Lambda may write only to /tmp
                        "PUSHSITE_QUEUE": {"Fn::Sub": "sqs://${DeployQueue.QueueName}"},
                        "PUSHSITE_STORE": {"Fn::Sub": "s3://${ContentBucket}"},
                        "PUSHSITE_STATE": {"Fn::Sub": "dynamodb://${DeploymentsTable}"},
                        "PUSHSITE_STAGING": {"Fn::Sub": "s3://${StagingBucket}"},
                        "PUSHSITE_MIRROR": {"Fn::Sub": "s3://${HostingBucket}"},
                        # with builders: bundles that need a build are handed to them
                        "PUSHSITE_BUILD_QUEUE": {"Fn::If": [
                            CONDITION, build_queue_url(), {"Ref": "AWS::NoValue"}]},
                    }
                },
            },
        },
        # only with builders: the function may hand builds over, and nothing more
        "DeployerBuildGrant": {
            "Type": "AWS::IAM::Policy",
            "Condition": CONDITION,
            "Properties": {
                "PolicyName": "hand-builds-over",
                "Roles": [_ref("DeployerRole")],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        _statement("HandBuildsOver", ["sqs:SendMessage"], [_arn("BuildQueue")])
                    ],
                },
            },
        },
        **builder_resources(
            _bucket_arn("StagingBucketName", "staging", prefix),
            _bucket_arn("StagingBucketName", "staging", prefix, "/*"),
            _state_statement(),
            retention=345_600,  # 4 days, as the deploy queue
        ),
        "DeployQueueMapping": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "EventSourceArn": _arn("DeployQueue"),
                "FunctionName": _ref("DeployerFunction"),
                "BatchSize": 1,  # one bundle per invocation: each may use the whole timeout
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
                "ScalingConfig": {"MaximumConcurrency": _ref("MaxConcurrency")},
            },
        },
    }


def render_template(*, stack_prefix: str = "pushsite",
                    table_indexes: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole template as a dict; `stack_prefix` starts every default name.
    `table_indexes` (default: all) leaves the table's other indexes out, for a stack update
    that adds them one at a time (aws/stack.py)."""
    if not _PREFIX.match(stack_prefix):
        raise ConfigError(
            f"invalid stack prefix {stack_prefix!r}: use 1-20 lowercase letters, digits and "
            "hyphens starting with a letter, because it becomes part of bucket names"
        )
    names = ("StagingBucketName", "ContentBucketName", "HostingBucketName")
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "pushsite: git push a static site (deployer on Lambda, state in DynamoDB)",
        "Parameters": _parameters(stack_prefix),
        "Conditions": {
            **{f"{name}Given": {"Fn::Not": [{"Fn::Equals": [_ref(name), ""]}]}
               for name in names},
            **builder_conditions(),
        },
        "Resources": _resources(stack_prefix, tuple(
            name for name in shape.INDEXES if table_indexes is None or name in table_indexes)),
        "Outputs": {
            "StagingBucket": {"Value": _ref("StagingBucket")},
            "ContentBucket": {"Value": _ref("ContentBucket")},
            "HostingBucket": {"Value": _ref("HostingBucket")},
            "HostingWebsiteURL": {"Value": {"Fn::GetAtt": ["HostingBucket", "WebsiteURL"]}},
            "Table": {"Value": _ref("DeploymentsTable")},
            "QueueUrl": {"Value": _ref("DeployQueue")},
            "DeadLetterQueueUrl": {"Value": _ref("DeadLetterQueue")},
            "Function": {"Value": _ref("DeployerFunction")},
            "BuildQueueUrl": {"Condition": CONDITION, "Value": _ref("BuildQueue")},
        },
    }


def write_template(path: Path, *, stack_prefix: str = "pushsite") -> Path:
    """Write the template as JSON (stable key order, so a diff shows real changes)."""
    text = json.dumps(render_template(stack_prefix=stack_prefix), indent=2) + "\n"
    path.write_text(text, encoding="utf-8")
    return path
