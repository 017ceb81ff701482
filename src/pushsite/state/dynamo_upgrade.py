"""Bringing a DynamoDB table made by an older pushsite up to today's shape (dynamo_shape.py).

Two steps, each safe to run from several processes at once and to stop at any point:

1. `add_indexes` (only with the state URL's `create=1`, which may change the table): adds
   `by_active` and `by_branch` (any index it lacks) with UpdateTable, one after the other
   (DynamoDB takes one index creation a call), waiting for each to be ACTIVE.
2. `backfill`: gives every deployment written before its `bpk`, and the in-flight ones their
   `active` (a conditional update: a deployment whose status moved meanwhile was rewritten
   whole by today's code, attributes included), then writes the SHAPE item. One process does
   it at a time (a claim with a lease); it records how far it came, so one stopped part way
   (a Lambda's 15 minutes) is resumed, not restarted, by the next.

Until SHAPE exists, DynamoState lists in-flight and branch deployments as before (a filtered
read of `by_time` / `by_site`): slower, never wrong. Once it exists, no older pushsite may
write to the table: its puts leave `active` out, so a deployment it starts would not be
listed as running, and recovery would not see it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from botocore.exceptions import ClientError

from pushsite.awssdk.client import error_code
from pushsite.errors import BackendUnavailable
from pushsite.state.dynamo_shape import (
    ADDED,
    INDEXES,
    SHAPE,
    SHAPE_VERSION,
    attribute_definitions,
    index,
    index_attributes,
)

CLAIM = ("meta", "backfill")  # who is backfilling, until when, and how far it came
CLAIM_LEASE = 600.0  # seconds a backfiller holds the claim without writing a page
INDEX_WAIT = 3600.0  # seconds add_indexes waits for DynamoDB to build an index
_PAGE = 500


def _key(pk: str, sk: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def add_indexes(client: Any, table: str) -> list[str]:
    """Create whichever of INDEXES the table lacks (ADDED, for a table made by pushsite);
    returns those this call created."""
    created: list[str] = []
    deadline = time.monotonic() + INDEX_WAIT
    for name in INDEXES:
        while True:
            described = client.describe_table(TableName=table)["Table"]
            status = {i["IndexName"]: i.get("IndexStatus", "ACTIVE")
                      for i in described.get("GlobalSecondaryIndexes", [])}
            if status.get(name) == "ACTIVE":
                break
            if name not in status and described.get("TableStatus") == "ACTIVE":
                try:
                    client.update_table(
                        TableName=table,
                        AttributeDefinitions=attribute_definitions(("gsk", INDEXES[name][0])),
                        GlobalSecondaryIndexUpdates=[{"Create": index(name)}])
                    created.append(name)
                    continue
                except ClientError as exc:  # another process is changing the table
                    if error_code(exc) not in ("ResourceInUseException",
                                               "LimitExceededException"):
                        raise
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"DynamoDB table {table!r}: index {name} was not ACTIVE after "
                    f"{INDEX_WAIT:.0f} s; open the state with create=1 again later")
            time.sleep(2)
    return created


def shaped(client: Any, table: str) -> bool:
    """Whether SHAPE says the indexes are usable (a consistent read of one item)."""
    item = client.get_item(TableName=table, Key=_key(*SHAPE), ConsistentRead=True).get("Item")
    return item is not None and int(item["version"]["N"]) >= SHAPE_VERSION


def mark_shaped(client: Any, table: str) -> None:
    client.put_item(TableName=table, Item={**_key(*SHAPE), "version": {"N": str(SHAPE_VERSION)},
                                           "at": {"N": str(time.time())}})


def indexes_answer(client: Any, table: str) -> bool:
    """Whether both added indexes exist and can be read (a Query of one key each; DynamoDB
    refuses a Query while an index is still being built)."""
    for name in ADDED:
        try:
            client.query(TableName=table, IndexName=name, Limit=1,
                         KeyConditionExpression="#k = :k",
                         ExpressionAttributeNames={"#k": INDEXES[name][0]},
                         ExpressionAttributeValues={":k": {"S": "-"}})
        except ClientError as exc:  # DynamoDB: ValidationException; moto: the other
            if error_code(exc) in ("ValidationException", "ResourceNotFoundException"):
                return False  # a missing table fails the listing's own Query after this
            raise
    return True


def backfill(client: Any, table: str) -> int | None:
    """Give older deployments their index attributes, then write SHAPE. Returns how many
    items were updated, or None when another process holds the claim (nothing done)."""
    me = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"
    start = _claim(client, table, me)
    if start is False:
        return None
    args: dict[str, Any] = {
        "TableName": table, "IndexName": "by_time", "ScanIndexForward": False, "Limit": _PAGE,
        "KeyConditionExpression": "apk = :dep",
        "ExpressionAttributeValues": {":dep": {"S": "dep"}},
        "ProjectionExpression": "pk, sk, gpk, gsk, branch, #status, active, bpk",
        "ExpressionAttributeNames": {"#status": "status"}}
    if isinstance(start, str):
        args["KeyConditionExpression"] += " AND gsk < :before"
        args["ExpressionAttributeValues"][":before"] = {"S": start}
    updated = 0
    for page in client.get_paginator("query").paginate(**args):
        items = page.get("Items", [])
        for item in items:
            updated += _give_attributes(client, table, item)
        if items and not _progress(client, table, me, items[-1]["gsk"]["S"]):
            return updated  # the claim was taken over: the new holder goes on
    mark_shaped(client, table)
    client.delete_item(TableName=table, Key=_key(*CLAIM))
    return updated


def _give_attributes(client: Any, table: str, item: dict[str, Any]) -> int:
    wanted = index_attributes(item)
    if all(item.get(name) == value for name, value in wanted.items()):
        return 0
    names = {"#status": "status", **{f"#{name}": name for name in wanted}}
    values = {":status": item["status"], **{f":{name}": value for name, value in wanted.items()}}
    try:
        client.update_item(
            TableName=table, Key=_key(item["pk"]["S"], item["sk"]["S"]),
            UpdateExpression="SET " + ", ".join(f"#{name} = :{name}" for name in wanted),
            ConditionExpression="#status = :status",
            ExpressionAttributeNames=names, ExpressionAttributeValues=values)
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        return 0  # its status moved: today's code wrote it whole, attributes included
    return 1


def _claim(client: Any, table: str, me: str) -> str | bool:
    """Take the claim when free or its lease ran out; False when held. True to start from
    the newest deployment, or the id to go on below when a stopped backfill got that far."""
    now = time.time()
    try:
        response = client.update_item(
            TableName=table, Key=_key(*CLAIM),
            UpdateExpression="SET holder = :me, #until = :until",
            ConditionExpression="attribute_not_exists(pk) OR #until < :now",
            ExpressionAttributeNames={"#until": "until"},
            ExpressionAttributeValues={":me": {"S": me}, ":until": {"N": str(now + CLAIM_LEASE)},
                                       ":now": {"N": str(now)}},
            ReturnValues="ALL_NEW")
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise
    before = response["Attributes"].get("before")
    return str(before["S"]) if before else True


def _progress(client: Any, table: str, me: str, before: str) -> bool:
    """Record how far the backfill came and renew the claim; False when no longer held."""
    try:
        client.update_item(
            TableName=table, Key=_key(*CLAIM),
            UpdateExpression="SET #before = :before, #until = :until",
            ConditionExpression="holder = :me",
            ExpressionAttributeNames={"#before": "before", "#until": "until"},
            ExpressionAttributeValues={":before": {"S": before}, ":me": {"S": me},
                                       ":until": {"N": str(time.time() + CLAIM_LEASE)}})
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise
    return True
