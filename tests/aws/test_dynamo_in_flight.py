"""Issue 20 on DynamoDB: what is in flight and a site's branch are read from indexes that
hold only those (state/dynamo_shape.py), so a listing reads about as many items as it
returns, whatever has finished beside them. Items read are counted from DynamoDB's own
answers (a Query's ScannedCount, before any filter; a BatchGetItem's items) through a botocore
event hook on the state's client, on moto's standalone server."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import boto3

from pushsite.ids import new_id
from pushsite.model import Deployment, Status
from pushsite.state.dynamodb import DynamoState

FINISHED = (Status.LIVE, Status.READY, Status.FAILED, Status.CANCELLED)


class Reads:
    """What one client's calls read: items (Query: ScannedCount; BatchGetItem: the items
    returned; GetItem: 1 when found) and calls by name."""

    def __init__(self, state: DynamoState) -> None:
        self.items = 0
        self.calls: Counter[str] = Counter()
        state._client.meta.events.register("after-call.dynamodb", self._seen)

    def _seen(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls[model.name] += 1
        if model.name in ("Query", "Scan"):
            self.items += parsed.get("ScannedCount", 0)
        elif model.name == "BatchGetItem":
            self.items += sum(len(found) for found in parsed.get("Responses", {}).values())
        elif model.name == "GetItem":
            self.items += "Item" in parsed

    def reset(self) -> None:
        self.items = 0
        self.calls.clear()


def deployment(site: str, status: Status, at: float, branch: str = "main") -> Deployment:
    return Deployment(new_id(at), site, branch, status=status, created=at)


def populate(state: DynamoState, finished: int, flight: dict[int, Status],
             sites: tuple[str, ...] = ("a", "b")) -> dict[Status, list[str]]:
    """`finished` ended deployments with in-flight ones at the given positions; the ids of
    each in-flight status, newest first."""
    base = time.time() - 100_000
    ids: dict[Status, list[str]] = {}
    for n in range(finished + len(flight)):
        status = flight.get(n, FINISHED[n % len(FINISHED)])
        made = deployment(sites[n % len(sites)], status, base + n)
        state.create_deployment(made)
        ids.setdefault(status, []).insert(0, made.id)
    return ids


def in_index(state: DynamoState, status: Status) -> set[str]:
    """The ids by_active holds under a status, read straight from the index."""
    found = state._client.query(
        TableName=state.table, IndexName="by_active", KeyConditionExpression="active = :s",
        ExpressionAttributeValues={":s": {"S": str(status)}})
    return {item["gsk"]["S"] for item in found["Items"]}


def test_running_among_500_finished_reads_the_running_only(dynamodb_url: str) -> None:
    state = DynamoState.from_url(dynamodb_url)
    flight = {n: Status.RUNNING for n in (3, 90, 200, 333, 480)}
    flight.update({n: Status.QUEUED for n in (10, 250, 499)})
    ids = populate(state, 500, flight)
    reads = Reads(state)

    running = state.list_deployments(status=Status.RUNNING, limit=50)
    assert [d.id for d in running] == ids[Status.RUNNING]
    assert all(d.status == Status.RUNNING for d in running)
    assert reads.items <= 2 * 5, reads.items  # 5 keys from the index, then the 5 items
    assert reads.calls == {"Query": 1, "BatchGetItem": 1}

    reads.reset()  # what the same listing read before by_active: the whole of by_time
    before = state._client.query(
        TableName=state.table, IndexName="by_time", KeyConditionExpression="apk = :d",
        FilterExpression="#s = :s", ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":d": {"S": "dep"}, ":s": {"S": "running"}})
    assert before["Count"] == 5 and reads.items >= 505

    reads.reset()
    queued = state.list_deployments(status=Status.QUEUED, limit=50)
    assert [d.id for d in queued] == ids[Status.QUEUED] and reads.items <= 2 * 3

    pages, after = [], None  # paged by id, as recover() and the metrics read it
    while True:
        page = state.list_deployments(status=Status.RUNNING, limit=2, before=after)
        pages.append([d.id for d in page])
        if len(page) < 2:
            break
        after = page[-1].id
    assert pages == [ids[Status.RUNNING][0:2], ids[Status.RUNNING][2:4], ids[Status.RUNNING][4:]]

    of_a = state.list_deployments("a", status=Status.RUNNING)  # a site's: filtered in the index
    assert [d.id for d in of_a] == [i for i in ids[Status.RUNNING]
                                    if state.get_deployment(i).site == "a"]
    assert state.list_deployments("a", branch="other", status=Status.RUNNING) == []


def test_a_deployment_leaves_the_index_in_the_write_that_ends_it(dynamodb_url: str) -> None:
    state = DynamoState.from_url(dynamodb_url)
    made = deployment("a", Status.QUEUED, time.time())
    state.create_deployment(made)
    assert made.id in in_index(state, Status.QUEUED)

    made.status, made.runner, made.lease_until = Status.RUNNING, "cli@h:1:n", time.time() + 30
    assert state.update_deployment(made, expect_status=Status.QUEUED)
    assert made.id in in_index(state, Status.RUNNING) and made.id not in in_index(
        state, Status.QUEUED)
    # a renewal and a progress record leave it there (they write no status)
    assert state.claim_lease(made.id, "cli@h:1:n", time.time() + 60, holder="cli@h:1:n")
    made.progress = "12 files"
    assert state.record_progress(made)
    assert [d.id for d in state.list_deployments(status=Status.RUNNING)] == [made.id]

    made.status = Status.LIVE
    assert state.update_deployment(made, expect_status=Status.RUNNING, expect_runner="cli@h:1:n")
    assert made.id not in in_index(state, Status.RUNNING)
    assert state.list_deployments(status=Status.RUNNING) == []
    item = state._client.get_item(TableName=state.table,
                                  Key={"pk": {"S": f"dep#{made.id}"}, "sk": {"S": "#"}})["Item"]
    assert "active" not in item and item["status"]["S"] == "live"

    stale = deployment("a", Status.RUNNING, made.created)  # a stale writer's compare fails,
    stale.id = made.id                                     # and puts nothing back
    assert not state.update_deployment(stale, expect_status=Status.RUNNING)
    assert made.id not in in_index(state, Status.RUNNING)
    assert state.get_deployment(made.id).status == Status.LIVE


def test_a_branch_listing_reads_that_branch_only(dynamodb_url: str) -> None:
    state = DynamoState.from_url(dynamodb_url)
    base = time.time() - 1000
    wanted = []
    for n in range(200):
        branch = "feature/x" if n in (7, 100, 180) else "main"
        made = deployment("a", FINISHED[n % 4], base + n, branch)
        state.create_deployment(made)
        if branch == "feature/x":
            wanted.insert(0, made.id)
    for n in range(20):  # the same branch on a site whose name begins like it
        state.create_deployment(deployment("a-2", Status.LIVE, base + 500 + n, "feature/x"))
    reads = Reads(state)

    found = state.list_deployments("a", branch="feature/x", limit=50)
    assert [d.id for d in found] == wanted
    assert reads.items == 3 and reads.calls == {"Query": 1}
    assert [d.id for d in state.list_deployments("a", branch="feature/x", limit=2,
                                                 before=wanted[1])] == wanted[2:]
    live = state.list_deployments("a", branch="feature/x", status=Status.LIVE)
    assert [d.id for d in live] == [i for i in wanted
                                    if state.get_deployment(i).status == Status.LIVE]
    assert len(state.list_deployments("a-2", branch="feature/x")) == 20


def test_two_listers_at_once_see_the_same_running(dynamodb_url: str) -> None:
    """What recover() in two workers at once reads: both the same running set, each reading
    only it (tests/aws/test_dynamo_recover.py runs recover() itself in two Services)."""
    from concurrent.futures import ThreadPoolExecutor

    writer = DynamoState.from_url(dynamodb_url)
    ids = populate(writer, 300, {n: Status.RUNNING for n in (5, 150, 299)})
    url = dynamodb_url.replace("&create=1", "")
    workers = [DynamoState.from_url(url) for _ in range(2)]
    counted = [Reads(worker) for worker in workers]
    with ThreadPoolExecutor(2) as pool:
        seen = list(pool.map(lambda w: [d.id for d in w.list_deployments(
            status=Status.RUNNING, limit=1000)], workers))
    assert seen == [ids[Status.RUNNING]] * 2
    # each: the SHAPE item (once a process), 3 keys, 3 items
    assert [r.items for r in counted] == [1 + 3 + 3] * 2


def _older_table(moto: str, name: str) -> Any:
    """A table as the previous template made it: by_site and by_time only."""
    client = boto3.client("dynamodb", endpoint_url=moto, region_name="us-east-1")
    client.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"}
                              for n in ("pk", "sk", "gpk", "gsk", "apk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {"IndexName": index, "Projection": {"ProjectionType": "ALL"},
             "KeySchema": [{"AttributeName": key, "KeyType": "HASH"},
                           {"AttributeName": "gsk", "KeyType": "RANGE"}]}
            for index, key in (("by_site", "gpk"), ("by_time", "apk"))])
    return client


def _write_older(client: Any, table: str, state: DynamoState, made: Deployment) -> None:
    """A deployment as the previous version wrote it: no `active`, no `bpk`."""
    item = state._deployment_item(made)
    del item["bpk"]
    item.pop("active", None)
    client.put_item(TableName=table, Item=item)


def test_an_older_table_lists_as_before_until_create_1_adds_the_indexes(
        moto: str, dynamodb_url: str, caplog: Any, monkeypatch: Any) -> None:
    import pushsite.state.dynamodb as dynamodb

    monkeypatch.setattr(dynamodb, "SHAPE_RECHECK", 0.0)  # look again at every listing
    name = "older-" + dynamodb_url.split("//")[1].split("?")[0]
    client = _older_table(moto, name)
    url = f"dynamodb://{name}?endpoint={moto}"
    reader = DynamoState.from_url(url)  # a worker opened before the upgrade, no create=1
    base = time.time() - 1000
    running = []
    for n in range(200):
        status = Status.RUNNING if n in (20, 120) else FINISHED[n % 4]
        made = deployment("a", status, base + n, "feature" if n in (20, 50) else "main")
        _write_older(client, name, reader, made)
        if status == Status.RUNNING:
            running.insert(0, made.id)

    reads = Reads(reader)
    with caplog.at_level("WARNING", logger="pushsite.state"):
        assert [d.id for d in reader.list_deployments(status=Status.RUNNING)] == running
    assert reads.items >= 200  # read as before: the whole of by_time
    assert "create=1" in caplog.text and f"dynamodb://{name}?create=1" in caplog.text
    assert len(reader.list_deployments("a", branch="feature")) == 2

    upgraded = DynamoState.from_url(url + "&create=1")  # adds both indexes, backfills
    indexes = {i["IndexName"] for i in client.describe_table(
        TableName=name)["Table"]["GlobalSecondaryIndexes"]}
    assert indexes == {"by_site", "by_time", "by_active", "by_branch"}
    assert in_index(upgraded, Status.RUNNING) == set(running)
    for state in (upgraded, reader):  # the older process finds it at its next look
        reads = Reads(state)
        assert [d.id for d in state.list_deployments(status=Status.RUNNING)] == running
        assert reads.items <= 1 + 2 * 2, reads.items
        reads.reset()
        assert [d.branch for d in state.list_deployments("a", branch="feature")] == [
            "feature"] * 2
        assert reads.items == 2 and reads.calls == {"Query": 1}


def test_a_template_made_table_is_backfilled_by_the_first_lister_once(
        moto: str, dynamodb_url: str) -> None:
    """Every index, but older deployments and no SHAPE item (a stack updated to the new
    template): the first process to list backfills, under a claim; a claim held elsewhere
    leaves it listing as before."""
    from pushsite.state import dynamo_upgrade as upgrade

    name = "stack-" + dynamodb_url.split("//")[1].split("?")[0]
    client = _older_table(moto, name)
    assert upgrade.add_indexes(client, name) == ["by_active", "by_branch"]
    url = f"dynamodb://{name}?endpoint={moto}"
    first = DynamoState.from_url(url)
    base = time.time() - 1000
    queued = [deployment("a", Status.QUEUED, base + n) for n in range(3)]
    for n, made in enumerate(queued):
        _write_older(client, name, first, made)
        _write_older(client, name, first, deployment("a", Status.LIVE, base + 10 + n))

    claim = {"pk": {"S": upgrade.CLAIM[0]}, "sk": {"S": upgrade.CLAIM[1]},
             "holder": {"S": "elsewhere"}, "until": {"N": str(time.time() + 600)}}
    client.put_item(TableName=name, Item=claim)
    assert len(first.list_deployments(status=Status.QUEUED)) == 3  # as before
    assert not upgrade.shaped(client, name) and in_index(first, Status.QUEUED) == set()

    claim["until"] = {"N": str(time.time() - 1)}  # the other backfiller stopped
    client.put_item(TableName=name, Item=claim)
    second = DynamoState.from_url(url)
    assert [d.id for d in second.list_deployments(status=Status.QUEUED)] == [
        d.id for d in reversed(queued)]
    assert upgrade.shaped(client, name)
    assert in_index(second, Status.QUEUED) == {d.id for d in queued}
    assert "Item" not in client.get_item(TableName=name, Key={
        "pk": claim["pk"], "sk": claim["sk"]})
