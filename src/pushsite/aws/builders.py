"""The template's builder workers: EC2 instances running `pushsite worker --builds`.

A site whose pushsite.toml has a build command cannot be built in the Lambda function (no
bubblewrap sandbox there), so with `Builders` above 0 the stack adds:

    BuildQueue (--maxReceiveCount--> BuildDeadLetterQueue)
        the deployer function hands each staged bundle that asks for a build to it
        (PUSHSITE_BUILD_QUEUE, service/building.py) and leaves its deployment queued
    BuilderGroup: an Auto Scaling group of `Builders` instances (Debian 12 by default:
        bubblewrap, python3.11 and the generators come from its packages), each running
        BUILDER_PROCESSES `pushsite worker --builds` under systemd, with BuilderRole
        (the build queue, staging read, content read/write, the table, and the hosting
        bucket: a builder mirrors what it puts live, as the function does)

With `Builders` at 0 (the default) none of it exists, the function gets no build queue, and a
bundle that needs a build fails with the sandbox's one-line error, as before.

Why EC2 and not Fargate: bubblewrap needs unprivileged user namespaces, which Fargate's
containers do not allow; a Debian instance has them on by default. Why two processes per
instance: a builder that dies mid-build leaves its message to reappear after its lease, and
the other takes the deployment over (tests/test_build_workers.py).
"""

from __future__ import annotations

from typing import Any

import pushsite

Json = dict[str, Any]
CONDITION = "WithBuilders"
# The builders' lease: the build queue URL's ?visibility= (service/worker.py lease_seconds);
# each builder's heartbeat renews it every third, so only a dead builder's message reappears.
BUILDER_LEASE = 60
BUILDER_PROCESSES = 2
DEBIAN_12 = "/aws/service/debian/release/12/latest/amd64"


def build_queue_url() -> Json:
    """PUSHSITE_BUILD_QUEUE as the function and the builders read it."""
    return {"Fn::Sub": f"sqs://${{BuildQueue.QueueName}}?visibility={BUILDER_LEASE}"}


def builder_parameters() -> Json:
    return {
        # a String (digits), not a Number: the condition compares it with "0" as text
        "Builders": {
            "Type": "String", "Default": "0", "AllowedPattern": r"^(0|[1-9][0-9]?)$",
            "Description": "EC2 instances running `pushsite worker --builds` for sites with a "
                           "build command; 0: none (such bundles fail)",
        },
        "BuilderSubnets": {
            "Type": "CommaDelimitedList", "Default": "",
            "Description": "Subnets for the builders (outbound internet: packages and AWS "
                           "APIs); required when Builders > 0",
        },
        "BuilderInstanceType": {
            "Type": "String", "Default": "t3.medium",
            "Description": "Builders' instance type (its architecture must match the image)",
        },
        # resolved by EC2 at each launch (a launch template's ImageId may be
        # resolve:ssm:<parameter>), so a replaced builder gets the current Debian 12
        "BuilderImageParameter": {
            "Type": "String", "Default": DEBIAN_12, "AllowedPattern": r"^/\S+$",
            "Description": "SSM parameter naming the builders' AMI (Debian or Ubuntu: the boot "
                           "script uses apt)",
        },
        "BuilderPackages": {
            "Type": "String", "Default": "hugo jekyll nodejs npm",
            "Description": "Debian packages the builds may call, installed beside bubblewrap",
        },
        "PushsiteVersion": {
            "Type": "String", "Default": pushsite.__version__,
            "AllowedPattern": r"^[0-9][0-9A-Za-z.+-]*$",
            "Description": "The pushsite release the builders install from PyPI (the "
                           "function's own, to run the same deploy code)",
        },
    }


def builder_conditions() -> Json:
    return {CONDITION: {"Fn::Not": [{"Fn::Equals": [{"Ref": "Builders"}, "0"]}]}}


def _builder_policy(staging_bucket: Json, staging_objects: Json,
                    state_statement: Json) -> Json:
    def allow(sid: str, actions: list[str], resources: list[Any]) -> Json:
        return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}

    return {
        "Version": "2012-10-17",
        "Statement": [
            allow("BuildQueue", ["sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage",
                                 "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility",
                                 # its own messages after a deploy (brotli, notifications)
                                 "sqs:SendMessage"],
                  [{"Fn::GetAtt": ["BuildQueue", "Arn"]}]),
            # a staged bundle is downloaded whole before it is built (service/building.py)
            allow("ListStaging", ["s3:ListBucket"], [staging_bucket]),
            allow("ReadStaging", ["s3:GetObject"], [staging_objects]),
            allow("ListContent", ["s3:ListBucket"], [{"Fn::GetAtt": ["ContentBucket", "Arn"]}]),
            allow("WriteContent", ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                  [{"Fn::Sub": "${ContentBucket.Arn}/*"}]),
            # what a builder puts live is mirrored by it, as the function mirrors its own
            allow("ListHosting", ["s3:ListBucket"], [{"Fn::GetAtt": ["HostingBucket", "Arn"]}]),
            allow("MirrorHosting", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                  [{"Fn::Sub": "${HostingBucket.Arn}/*"}]),
            {**state_statement, "Sid": "State"},
        ],
    }


_BOOT = """#!/bin/bash
# pushsite builders: bubblewrap, the generators and pushsite, then BUILDER_PROCESSES
# `pushsite worker --builds` under systemd (each restarted if it dies)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends bubblewrap python3-venv git ca-certificates \\
    ${BuilderPackages}
python3 -m venv /opt/pushsite
/opt/pushsite/bin/pip install --no-cache-dir "pushsite==${PushsiteVersion}" boto3
useradd --system --create-home --home-dir /var/lib/pushsite pushsite
cat > /etc/systemd/system/pushsite-builder@.service <<'UNIT'
[Unit]
Description=pushsite builder %i
Wants=network-online.target
After=network-online.target
[Service]
User=pushsite
Environment=PUSHSITE_HOME=/var/lib/pushsite/%i
Environment=PUSHSITE_BUILD_QUEUE=sqs://${BuildQueue.QueueName}?visibility=LEASE
Environment=PUSHSITE_STORE=s3://${ContentBucket}
Environment=PUSHSITE_STATE=dynamodb://${DeploymentsTable}
Environment=PUSHSITE_MIRROR=s3://${HostingBucket}
Environment=AWS_DEFAULT_REGION=${AWS::Region}
ExecStart=/opt/pushsite/bin/pushsite worker --builds
Restart=always
RestartSec=5
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now UNITS
"""


def boot_script() -> str:
    """The instances' user data, before Fn::Sub fills in the stack's names."""
    units = " ".join(f"pushsite-builder@{n}" for n in range(1, BUILDER_PROCESSES + 1))
    return _BOOT.replace("LEASE", str(BUILDER_LEASE)).replace("UNITS", units)


def builder_resources(staging_bucket: Json, staging_objects: Json, state_statement: Json,
                      retention: int) -> Json:
    """The build queues, the builders' role and their Auto Scaling group (all conditional)."""
    when = {"Condition": CONDITION}
    on_delete = {"DeletionPolicy": "Delete", "UpdateReplacePolicy": "Delete"}
    return {
        "BuildDeadLetterQueue": {
            "Type": "AWS::SQS::Queue", **when, **on_delete,
            "Properties": {"QueueName": {"Fn::Sub": "${QueueName}-builds-dead"},
                           "MessageRetentionPeriod": 1_209_600},  # 14 days, SQS's maximum
        },
        "BuildQueue": {
            "Type": "AWS::SQS::Queue", **when, **on_delete,
            "Properties": {
                "QueueName": {"Fn::Sub": "${QueueName}-builds"},
                "MessageRetentionPeriod": retention,
                # receives name their own visibility (the lease); this covers any other
                "VisibilityTimeout": BUILDER_LEASE,
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": ["BuildDeadLetterQueue", "Arn"]},
                    "maxReceiveCount": {"Ref": "MaxReceiveCount"},
                },
            },
        },
        "BuilderRole": {
            "Type": "AWS::IAM::Role", **when,
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow",
                                   "Principal": {"Service": "ec2.amazonaws.com"},
                                   "Action": "sts:AssumeRole"}],
                },
                "Policies": [{"PolicyName": "builder", "PolicyDocument": _builder_policy(
                    staging_bucket, staging_objects, state_statement)}],
            },
        },
        "BuilderInstanceProfile": {
            "Type": "AWS::IAM::InstanceProfile", **when,
            "Properties": {"Roles": [{"Ref": "BuilderRole"}]},
        },
        "BuilderLaunchTemplate": {
            "Type": "AWS::EC2::LaunchTemplate", **when,
            "Properties": {
                "LaunchTemplateData": {
                    "ImageId": {"Fn::Sub": "resolve:ssm:${BuilderImageParameter}"},
                    "InstanceType": {"Ref": "BuilderInstanceType"},
                    "IamInstanceProfile": {
                        "Arn": {"Fn::GetAtt": ["BuilderInstanceProfile", "Arn"]}},
                    # IMDSv2 only: a build's code runs in the sandbox without network to it,
                    # and nothing else on the instance needs the older protocol
                    "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
                    "UserData": {"Fn::Base64": {"Fn::Sub": boot_script()}},
                },
            },
        },
        "BuilderGroup": {
            "Type": "AWS::AutoScaling::AutoScalingGroup", **when,
            "Properties": {
                "MinSize": {"Ref": "Builders"},
                "MaxSize": {"Ref": "Builders"},
                "DesiredCapacity": {"Ref": "Builders"},
                "VPCZoneIdentifier": {"Ref": "BuilderSubnets"},
                "LaunchTemplate": {
                    "LaunchTemplateId": {"Ref": "BuilderLaunchTemplate"},
                    "Version": {"Fn::GetAtt": ["BuilderLaunchTemplate", "LatestVersionNumber"]},
                },
            },
        },
    }
