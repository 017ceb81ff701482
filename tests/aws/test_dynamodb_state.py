"""DynamoState against moto's DynamoDB: what the contract tests do not reach, and the shared
error mapping of pushsite.awssdk.client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from pushsite.awssdk.client import BackendUrl, make_client, translate
from pushsite.errors import BackendUnavailable, ConfigError
from pushsite.ids import new_id
from pushsite.model import PRODUCTION, Deployment, LogLine, Site
from pushsite.state import open_state_store
from pushsite.state.dynamodb import DynamoState


@pytest.fixture
def state(dynamodb_url: str) -> Iterator[DynamoState]:
    store = open_state_store(dynamodb_url)
    assert isinstance(store, DynamoState)
    try:
        yield store
    finally:
        store.close()


def test_created_table_has_keys_and_every_index(state: DynamoState, moto: str) -> None:
    client = boto3.client("dynamodb", endpoint_url=moto, region_name="us-east-1")
    table = client.describe_table(TableName=state.table)["Table"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["pk", "sk"]
    indexes = {
        i["IndexName"]: [k["AttributeName"] for k in i["KeySchema"]]
        for i in table["GlobalSecondaryIndexes"]
    }
    assert indexes == {"by_site": ["gpk", "gsk"], "by_time": ["apk", "gsk"],
                       "by_active": ["active", "gsk"], "by_branch": ["bpk", "gsk"]}


def test_missing_table_without_create_is_a_config_error(moto: str) -> None:
    state = open_state_store(f"dynamodb://not-there?endpoint={moto}")
    try:
        with pytest.raises(ConfigError, match="not-there") as caught:
            state.get_site("blog")
        assert isinstance(caught.value.__cause__, ClientError)
    finally:
        state.close()


def test_unreachable_endpoint_is_backend_unavailable(aws_credentials: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state = open_state_store(f"dynamodb://t?endpoint=http://127.0.0.1:{port}")
    try:
        with pytest.raises(BackendUnavailable, match=str(port)) as caught:
            state.remember("x")
        assert caught.value.__cause__ is not None
    finally:
        state.close()


def test_two_deployers_race_and_the_newest_id_wins(dynamodb_url: str) -> None:
    """Two clients, as two Lambda invocations would be: only the conditional write decides."""
    first, second = open_state_store(dynamodb_url), open_state_store(dynamodb_url)
    ids = [new_id() for _ in range(10)]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            moved = list(
                pool.map(
                    lambda pair: pair[1].move_alias("blog", PRODUCTION, pair[0], pair[0]),
                    [(i, first if n % 2 else second) for n, i in enumerate(reversed(ids))],
                )
            )
        alias = first.get_alias("blog", PRODUCTION)
    finally:
        first.close()
        second.close()
    assert alias is not None and alias.deployment_id == ids[-1]
    assert moved[0] is True  # the newest id moves it whenever it runs


def test_logs_longer_than_a_batch_keep_their_order(state: DynamoState) -> None:
    deployment = Deployment(id=new_id(), site="blog", branch="main")
    state.create_deployment(deployment)
    lines = [LogLine(deployment.id, float(i), "info", "store", f"line {i}") for i in range(60)]
    state.append_logs(lines[:37])
    state.append_logs(lines[37:])
    stored = state.get_logs(deployment.id)
    assert [line.message for line in stored] == [f"line {i}" for i in range(60)]
    assert [line.seq for line in stored] == list(range(1, 61))
    assert [line.seq for line in state.get_logs(deployment.id, after=58)] == [59, 60]


def test_search_is_a_case_insensitive_substring_filter(state: DynamoState) -> None:
    deployment = Deployment(id=new_id(), site="blog", branch="main")
    state.create_deployment(deployment)
    state.append_logs(
        [
            LogLine(deployment.id, 1.0, "error", "store", "Upload FAILED", {"path": "img/a.png"}),
            LogLine(deployment.id, 2.0, "info", "store", "uploaded 3 files"),
        ]
    )
    assert [line.message for line in state.search_logs("blog", "fail")] == ["Upload FAILED"]
    assert [line.message for line in state.search_logs("blog", "a.png")] == ["Upload FAILED"]
    assert len(state.search_logs("blog", "upload")) == 2
    assert state.search_logs("blog", "   ") == []


def test_delete_site_with_more_items_than_a_batch(state: DynamoState) -> None:
    state.put_site(Site("blog"))
    for n in range(30):
        deployment = Deployment(id=new_id(), site="blog", branch=f"b{n}")
        state.create_deployment(deployment)
        state.append_logs([LogLine(deployment.id, 1.0, "info", "read", "hello")])
    state.delete_site("blog")
    assert state.list_deployments("blog") == []
    assert state.search_logs("blog", "hello") == []


# the shared error mapping --------------------------------------------------------------------
def _client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutItem")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("ProvisionedThroughputExceededException", 400), BackendUnavailable),
        (_client_error("ThrottlingException", 400), BackendUnavailable),
        (_client_error("SlowDown", 503), BackendUnavailable),
        (_client_error("InternalServerError", 500), BackendUnavailable),
        (_client_error("AccessDeniedException", 400), ConfigError),
        (_client_error("ResourceNotFoundException", 400), ConfigError),
        (_client_error("", 403), ConfigError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), BackendUnavailable),
        (NoCredentialsError(), ConfigError),
    ],
)
def test_botocore_errors_map_to_pushsite_errors(error: Exception, expected: type) -> None:
    mapped = translate(error, "DynamoDB table 'state'")
    assert type(mapped) is expected
    assert "'state'" in str(mapped)


def test_backend_url_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    target = BackendUrl.parse("s3://bucket/some/prefix/?create=1&workers=4", "s3")
    assert (target.name, target.path, target.endpoint, target.region, target.create) == (
        "bucket",
        "some/prefix",
        None,
        "us-east-1",
        True,
    )
    assert target.int_option("workers", 16) == 4
    explicit = BackendUrl.parse("sqs://q?endpoint=http://h:1&region=eu-west-1", "sqs")
    assert (explicit.endpoint, explicit.region, explicit.create) == (
        "http://h:1",
        "eu-west-1",
        False,
    )
    with pytest.raises(ConfigError, match="workers"):
        BackendUrl.parse("s3://b?workers=many", "s3").int_option("workers", 16)
    with pytest.raises(ConfigError, match="s3://"):
        BackendUrl.parse("s3:///nobucket", "s3")


def test_endpoint_precedence_url_then_service_variable_then_generic(
    monkeypatch: pytest.MonkeyPatch, aws_credentials: None
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    s3 = make_client("s3", BackendUrl.parse("s3://b", "s3"))
    sqs = make_client("sqs", BackendUrl.parse("sqs://q", "sqs"))
    given = make_client("s3", BackendUrl.parse("s3://b?endpoint=http://127.0.0.1:3", "s3"))
    assert s3.meta.endpoint_url == "http://127.0.0.1:2"
    assert sqs.meta.endpoint_url == "http://127.0.0.1:1"
    assert given.meta.endpoint_url == "http://127.0.0.1:3"
    assert s3.meta.config.s3["addressing_style"] == "path"  # an S3-compatible server
