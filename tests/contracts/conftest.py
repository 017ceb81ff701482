"""Backend URLs for the contract tests: every backend of a protocol, each on a real server.

The server fixtures live in tests/aws/conftest.py; it is loaded here by path (a conftest is not
an importable module) so both folders share one definition.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "pushsite_test_aws_servers", Path(__file__).parent.parent / "aws" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_servers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_servers)

aws_credentials = _servers.aws_credentials
moto_server = _servers.moto_server
moto = _servers.moto
seaweed_server = _servers.seaweed_server
seaweed_url = _servers.seaweed_url
moto_s3_url = _servers.moto_s3_url
dynamodb_url = _servers.dynamodb_url
sqs_url = _servers.sqs_url
