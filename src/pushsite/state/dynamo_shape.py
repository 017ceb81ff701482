"""The DynamoDB table's key shape: its attributes and indexes, shared by the state's
`create=1` and the CloudFormation template so the two never differ (docs/architecture.md).

    index       key (hash, range)     holds                               projection
    by_site     gpk = site#<site>, gsk  every deployment of a site          ALL
    by_time     apk = "dep", gsk        every deployment                    ALL
    by_active   active = <status>, gsk  only receiving/queued/running ones  keys, gpk, branch
    by_branch   bpk = <site>#<branch>, gsk  a site's deployments of a branch    ALL

`by_active` is sparse: a deployment carries `active` only while in flight, and the conditional
put that gives it a final status leaves the attribute out, so the index holds the tens in
flight, not the millions that ended. It projects no more than never-changing attributes, so
a progress record or a lease renewal (the writes of a running deployment) never writes to
it: only the two or three status changes do. A listing reads its keys, then the items
themselves in one consistent BatchGetItem, dropping any whose status moved meanwhile.

A table made before `by_active`/`by_branch` lacks them, and its deployments lack `active` and
`bpk`. `SHAPE` (an item) records that both exist and every older deployment was given its
attributes (`DynamoState` then uses them); until then the listings read as before.
"""

from __future__ import annotations

from typing import Any

from pushsite.model import Status

IN_FLIGHT = frozenset({Status.RECEIVING, Status.QUEUED, Status.RUNNING})
ATTRIBUTES = ("pk", "sk", "gpk", "gsk", "apk", "active", "bpk")
SHAPE = ("meta", "shape")  # pk, sk of the item saying the indexes below are usable
SHAPE_VERSION = 2  # 1: by_site and by_time only
# name: (hash key, projection); every index's range key is gsk (the deployment id)
INDEXES: dict[str, tuple[str, dict[str, Any]]] = {
    "by_site": ("gpk", {"ProjectionType": "ALL"}),
    "by_time": ("apk", {"ProjectionType": "ALL"}),
    "by_active": ("active", {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["gpk", "branch"]}),
    "by_branch": ("bpk", {"ProjectionType": "ALL"}),
}
ADDED = ("by_active", "by_branch")  # the indexes a version 1 table lacks


def branch_key(site: str, branch: str) -> str:
    """by_branch's hash key: a site name never holds '#', so the first one splits the two."""
    return f"{site}#{branch}"


def index(name: str) -> dict[str, Any]:
    """One GlobalSecondaryIndexes entry, as CreateTable, UpdateTable and the template take it."""
    hash_key, projection = INDEXES[name]
    return {
        "IndexName": name,
        "KeySchema": [
            {"AttributeName": hash_key, "KeyType": "HASH"},
            {"AttributeName": "gsk", "KeyType": "RANGE"},
        ],
        "Projection": projection,
    }


def attribute_definitions(names: tuple[str, ...] = ATTRIBUTES) -> list[dict[str, str]]:
    return [{"AttributeName": name, "AttributeType": "S"} for name in names]


def table_attributes(indexes: tuple[str, ...]) -> list[dict[str, str]]:
    """The attribute definitions of a table with these indexes: DynamoDB refuses one that no
    key uses."""
    return attribute_definitions(("pk", "sk", "gsk", *(INDEXES[name][0] for name in indexes)))


def index_attributes(item: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The index attributes a deployment's item carries beyond gpk/gsk/apk: `active` only
    while it is in flight (the sparse index), `bpk` always."""
    status = Status(item["status"]["S"])
    site = item["gpk"]["S"].removeprefix("site#")
    found = {"bpk": {"S": branch_key(site, item["branch"]["S"])}}
    if status in IN_FLIGHT:
        found["active"] = {"S": str(status)}
    return found
