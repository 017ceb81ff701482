"""The state store on DynamoDB: one table, string keys `pk` and `sk`.

    dynamodb://table?endpoint=http://127.0.0.1:5000&create=1

Items (records are JSON in `data`; a few fields are copied out for conditions and indexes):

    pk                      sk                      what
    sites                   <site>                  Site
    site#<site>             alias#<name>            Alias (deployment_id, moved_by, updated)
    site#<site>             domain#<host>           the site's half of a domain claim
    domain#<host>           #                       the claim itself (site, status, scope,
                                                    claimed; no status: an older, approved one)
    dep#<id>                #                       Deployment (+ status, branch, gpk/gsk, apk,
                                                    bpk; active while in flight)
    dep#<id>                logseq                  the log's atomic counter (n)
    logs#<site>             <id>#<seq:010d>         LogLine (+ text: lowercase, for search)
    tokens                  <token id>              Token
    tokenhash#<hash>        #                       Token again, for lookup by hash
    seen#<key>              #                       remember()
    site#<site>             notify#<id>             NotifyEndpoint
    deliveries#<endpoint>   <time>#<random>         Delivery (its endpoint's log; + expires,
                                                    the table's TTL: DELIVERY_RETENTION)
    sweeps                  <sweep id>              Sweep (prune's record for deploys)

Indexes (dynamo_shape.py): `by_site` (gpk = "site#<site>", gsk = id) lists a site's
deployments newest first; `by_time` (apk = "dep", gsk = id) lists all of them; `by_branch`
(bpk = "<site>#<branch>") a site's branch; the sparse `by_active` (active = status, only while
receiving, queued or running) what is in flight. Index reads are eventually consistent, so a
deployment can take a moment to show in a list; get_deployment reads the item itself.
`create=1` on a table made before by_active and by_branch adds them (dynamo_upgrade.py).

`search_logs` is a filtered Query over the site's log partition, newest first: it reads every
line until `limit` match (each word must appear, case-insensitive), not an indexed full-text
search. `move_alias`, `claim_domain`, `remember` and `update_deployment(expect_status=...)` are
single conditional writes, so they hold however many deployers run at once.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from botocore.exceptions import ClientError

from pushsite.awssdk.client import BackendUrl, aws_errors, error_code, make_client
from pushsite.errors import (
    BackendUnavailable,
    ConfigError,
    DeploymentNotFound,
    DomainConflict,
    SiteNotFound,
)
from pushsite.model import (
    ADMIN_SCOPE,
    PRODUCTION,
    Alias,
    Delivery,
    Deployment,
    Domain,
    DomainStatus,
    LogLine,
    NotifyEndpoint,
    Site,
    SiteSettings,
    Status,
    Token,
)
from pushsite.state import DELIVERY_RETENTION, SiteHeads, Sweep, site_page
from pushsite.state import dynamo_shape as shape
from pushsite.state import dynamo_upgrade as upgrade

Item = dict[str, dict[str, Any]]
_SEQ_WIDTH = 10
TTL_ATTRIBUTE = "expires"  # epoch seconds; only delivery records carry it
SHAPE_RECHECK = 60.0  # seconds between two looks for the indexes of an older table
_log = logging.getLogger("pushsite.state")


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float | int) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def _json(value: Any) -> dict[str, str]:
    return {"S": json.dumps(value, separators=(",", ":"))}


def _load(item: Item) -> Any:
    return json.loads(item["data"]["S"])


def _domain_item(item: Item) -> Domain:
    """A domain claim's item; one written before claims had a status was served: approved."""
    status = item.get("status", {}).get("S", str(DomainStatus.APPROVED))
    return Domain(item["pk"]["S"].removeprefix("domain#"), item["site"]["S"],
                  DomainStatus(status), item.get("scope", {}).get("S", ""),
                  float(item.get("claimed", {}).get("N", "0")))


def _conditional_failure(exc: ClientError) -> bool:
    return error_code(exc) in ("ConditionalCheckFailedException", "TransactionCanceledException")


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _routes(method: Callable[Concatenate[DynamoState, _P], _R]
            ) -> Callable[Concatenate[DynamoState, _P], _R]:
    """Count a write to what the edge routes by (see DynamoState.own_writes): after the
    call, so a reader that saw the old count before its read always reads again."""
    def counted(self: DynamoState, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        finally:
            self._own_writes += 1

    return counted


class DynamoState:
    """Sites, deployments, aliases, logs and tokens in one DynamoDB table."""

    def __init__(self, table: str, *, target: BackendUrl) -> None:
        self.table = table
        self._what = f"DynamoDB table {table!r}"
        self._client = make_client("dynamodb", target)
        self._site_of: dict[str, str] = {}  # deployment id -> site; both never change
        self._own_writes = 0  # see own_writes
        self._shaped = False  # by_active and by_branch usable (_indexed)
        self._shape_checked = -SHAPE_RECHECK  # monotonic time of the last look
        self._warned = False  # said what to run for a table without them
        if target.create:
            self._ensure_table()

    @classmethod
    def from_url(cls, url: str) -> DynamoState:
        target = BackendUrl.parse(url, "dynamodb")
        return cls(target.name, target=target)

    def own_writes(self) -> int:
        """How many writes this process made to sites, domains, deployments and aliases
        (state.OwnWrites): DynamoDB has no cheap change signal, so the edge keeps its answers
        for a second at most, and at once drops them when this grows."""
        return self._own_writes

    def _ensure_table(self) -> None:
        with aws_errors(self._what):
            try:
                self._client.describe_table(TableName=self.table)
                self._enable_ttl()  # a table made before delivery records expired
                self._upgrade()  # one made before by_active and by_branch
                return
            except ClientError as exc:
                if error_code(exc) != "ResourceNotFoundException":
                    raise
            try:
                self._client.create_table(
                    TableName=self.table,
                    BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=shape.attribute_definitions(),
                    KeySchema=[
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    GlobalSecondaryIndexes=[shape.index(name) for name in shape.INDEXES],
                )
            except ClientError as exc:
                if error_code(exc) != "ResourceInUseException":  # created by a racing process
                    raise
            self._client.get_waiter("table_exists").wait(
                TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
            if not upgrade.shaped(self._client, self.table):
                upgrade.mark_shaped(self._client, self.table)  # new: nothing to backfill
            self._shaped = True
            self._enable_ttl()

    def _upgrade(self) -> None:
        """create=1 on a table made before by_active and by_branch: add them (UpdateTable,
        waiting until they are built), then give older deployments their attributes."""
        with aws_errors(self._what):
            if upgrade.shaped(self._client, self.table):
                self._shaped = True
                return
            added = upgrade.add_indexes(self._client, self.table)
            done = upgrade.backfill(self._client, self.table)
        if added or done:
            _log.warning("%s: added the indexes %s and gave %s older deployments their "
                         "attributes", self._what, ", ".join(added) or "(none)", done or 0)
        self._shaped = done is not None

    def _indexed(self) -> bool:
        """Whether by_active and by_branch can be listed from. A table made before them is
        brought up to date by the first process to find them built (the backfill, once);
        until then listings read as they used to, and say once what to run."""
        if self._shaped or time.monotonic() - self._shape_checked < SHAPE_RECHECK:
            return self._shaped
        self._shape_checked = time.monotonic()
        with aws_errors(self._what):
            if upgrade.shaped(self._client, self.table):
                self._shaped = True
            elif upgrade.indexes_answer(self._client, self.table):
                self._shaped = upgrade.backfill(self._client, self.table) is not None
            elif not self._warned:
                self._warned = True
                _log.warning(
                    "%s was made by an older pushsite and has no by_active/by_branch index: "
                    "listing running, queued and branch deployments reads every deployment "
                    "until it has. Add them once: run any command with create=1 added to the "
                    "state URL (its other settings kept), e.g. PUSHSITE_STATE='dynamodb://"
                    "%s?create=1' pushsite sites (docs/architecture.md)", self._what, self.table)
        return self._shaped

    def _enable_ttl(self) -> None:
        """Let DynamoDB delete delivery records past their retention (TTL_ATTRIBUTE); the
        deployment template sets the same on the tables it makes."""
        with aws_errors(self._what):
            found = self._client.describe_time_to_live(TableName=self.table)
            if found["TimeToLiveDescription"].get("TimeToLiveStatus") in ("ENABLED", "ENABLING"):
                return
            try:
                self._client.update_time_to_live(
                    TableName=self.table, TimeToLiveSpecification={
                        "Enabled": True, "AttributeName": TTL_ATTRIBUTE})
            except ClientError as exc:  # a racing process enabled it first
                if error_code(exc) != "ValidationException":
                    raise

    # low-level helpers ---------------------------------------------------------------------
    def _get(self, pk: str, sk: str) -> Item | None:
        with aws_errors(self._what):
            response = self._client.get_item(
                TableName=self.table, Key={"pk": _s(pk), "sk": _s(sk)}, ConsistentRead=True
            )
        item: Item | None = response.get("Item")
        return item

    def _put(self, item: Item, condition: str | None = None, **extra: Any) -> bool:
        """Put an item; False when the condition did not hold."""
        args: dict[str, Any] = {"TableName": self.table, "Item": item}
        if condition:
            args["ConditionExpression"] = condition
        args.update(extra)
        with aws_errors(self._what):
            try:
                self._client.put_item(**args)
            except ClientError as exc:
                if _conditional_failure(exc):
                    return False
                raise
        return True

    def _delete(self, pk: str, sk: str) -> None:
        with aws_errors(self._what):
            self._client.delete_item(TableName=self.table, Key={"pk": _s(pk), "sk": _s(sk)})

    def _query(self, **args: Any) -> Iterator[Item]:
        """Every item a Query returns, page after page."""
        paginator = self._client.get_paginator("query")
        with aws_errors(self._what):
            for page in paginator.paginate(TableName=self.table, **args):
                yield from page.get("Items", [])

    def _partition(self, pk: str, **args: Any) -> Iterator[Item]:
        return self._query(
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": _s(pk)},
            ConsistentRead=True,
            **args,
        )

    def _delete_keys(self, keys: list[tuple[str, str]]) -> None:
        for start in range(0, len(keys), 25):
            requests = [
                {"DeleteRequest": {"Key": {"pk": _s(pk), "sk": _s(sk)}}}
                for pk, sk in keys[start : start + 25]
            ]
            with aws_errors(self._what):
                pending: dict[str, Any] = {self.table: requests}
                for attempt in range(8):
                    response = self._client.batch_write_item(RequestItems=pending)
                    pending = response.get("UnprocessedItems") or {}
                    if not pending:
                        break
                    time.sleep(0.05 * 2**attempt)

    # sites ---------------------------------------------------------------------------------
    @_routes
    def put_site(self, site: Site) -> None:
        data = {
            "name": site.name,
            "production_branch": site.production_branch,
            "created": site.created,
            "webhook_secret": site.webhook_secret,
            "settings": site.settings.to_dict(),
        }
        self._put({"pk": _s("sites"), "sk": _s(site.name), "data": _json(data)})

    def get_site(self, name: str) -> Site:
        """The site record; `domains` are the hosts it has claimed (claim_domain)."""
        item = self._get("sites", name)
        if item is None:
            raise SiteNotFound(f"no site named {name!r}: create it first or check the name")
        return self._site(item)

    def list_sites(self, *, after: str | None = None, limit: int) -> list[Site]:
        """One Query of the `sites` partition from `after` (its sort key is the name), then
        each site's domain claims, a Query of its own partition as get_site reads them, a few
        at once (docs/scale.md: the site record could carry them instead)."""
        args: dict[str, Any] = {"KeyConditionExpression": "pk = :pk",
                                "ExpressionAttributeValues": {":pk": _s("sites")}}
        if after is not None:
            args["KeyConditionExpression"] += " AND sk > :after"
            args["ExpressionAttributeValues"][":after"] = _s(after)
        wanted = site_page(limit)
        items: list[Item] = []
        for item in self._query(ConsistentRead=True, Limit=wanted, **args):
            items.append(item)
            if len(items) == wanted:
                break
        with ThreadPoolExecutor(max_workers=min(8, max(len(items), 1))) as pool:
            return list(pool.map(self._site, items))

    def site_heads(self, sites: Sequence[str]) -> dict[str, SiteHeads]:
        """The production aliases and their deployments in two BatchGetItems; each site's
        newest deployment is one Query (Limit 1) on `by_site`, a few at once: DynamoDB has
        no query across partitions (docs/scale.md)."""
        names = list(dict.fromkeys(sites))
        heads: dict[str, SiteHeads] = {}
        aliases = self._batch_get([(f"site#{name}", f"alias#{PRODUCTION}") for name in names])
        live_ids = {item["pk"]["S"].removeprefix("site#"): item["deployment_id"]["S"]
                    for item in aliases}
        found = {item["pk"]["S"].removeprefix("dep#"): self._deployment(item) for item in
                 self._batch_get([(f"dep#{d}", "#") for d in set(live_ids.values())])}
        for name, deployment_id in live_ids.items():
            if deployment_id in found:
                heads.setdefault(name, SiteHeads()).live = found[deployment_id]
        with ThreadPoolExecutor(max_workers=min(8, max(len(names), 1))) as pool:
            newest = list(pool.map(lambda name: self.list_deployments(name, limit=1), names))
        for name, page in zip(names, newest, strict=True):
            if page:
                heads.setdefault(name, SiteHeads()).newest = page[0]
        return heads

    def _batch_get(self, keys: list[tuple[str, str]]) -> list[Item]:
        """The items of `keys` that exist (BatchGetItem, 100 keys a call, consistent)."""
        found: list[Item] = []
        for start in range(0, len(keys), 100):
            pending: dict[str, Any] = {self.table: {
                "Keys": [_key(pk, sk) for pk, sk in keys[start:start + 100]],
                "ConsistentRead": True}}
            with aws_errors(self._what):
                for attempt in range(8):
                    response = self._client.batch_get_item(RequestItems=pending)
                    found += response.get("Responses", {}).get(self.table, [])
                    pending = response.get("UnprocessedKeys") or {}
                    if not pending:
                        break
                    time.sleep(0.05 * 2**attempt)
            if pending:
                raise BackendUnavailable(f"{self._what} kept throttling a batch read")
        return found

    def _site(self, item: Item) -> Site:
        data = _load(item)
        data["settings"] = SiteSettings.from_dict(data.get("settings"))
        site = Site(**data)
        site.domains = self._claimed(site.name)
        return site

    def _claimed(self, site: str) -> list[str]:
        items = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :domain)",
            ExpressionAttributeValues={":pk": _s(f"site#{site}"), ":domain": _s("domain#")},
            ConsistentRead=True,
            ProjectionExpression="sk",
        )
        return [item["sk"]["S"].removeprefix("domain#") for item in items]

    @_routes
    def delete_site(self, name: str) -> None:
        keys: list[tuple[str, str]] = [("sites", name)]
        for item in self._partition(f"site#{name}", ProjectionExpression="pk, sk"):
            sk = item["sk"]["S"]
            keys.append((f"site#{name}", sk))
            if sk.startswith("domain#"):
                host = sk.removeprefix("domain#")
                if self.domain_site(host) == name:
                    keys.append((f"domain#{host}", "#"))
            elif sk.startswith("notify#"):
                keys += self._delivery_keys(sk.removeprefix("notify#"))
        for item in self._query(
            IndexName="by_site",
            KeyConditionExpression="gpk = :g",
            ExpressionAttributeValues={":g": _s(f"site#{name}")},
            ProjectionExpression="pk",
        ):
            keys += [(item["pk"]["S"], "#"), (item["pk"]["S"], "logseq")]
        for item in self._partition(f"logs#{name}", ProjectionExpression="pk, sk"):
            keys.append((f"logs#{name}", item["sk"]["S"]))
        self._delete_keys(keys)

    # domains -------------------------------------------------------------------------------
    @_routes
    def claim_domain(self, host: str, site: str, *,
                     status: DomainStatus = DomainStatus.PENDING,
                     scope: str = ADMIN_SCOPE) -> Domain:
        host = host.lower().rstrip(".")
        current = self.get_domain(host)
        if current is not None and current.site == site:
            if status is DomainStatus.APPROVED and not current.approved:
                self._approve(host, site, scope)
            claim = self.get_domain(host)
            if claim is not None:
                return claim
        item = {"pk": _s(f"domain#{host}"), "sk": _s("#"), "site": _s(site),
                "status": _s(str(status)), "scope": _s(scope), "claimed": _n(time.time())}
        request = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": item,
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Put": {
                    "TableName": self.table,
                    "Item": {"pk": _s(f"site#{site}"), "sk": _s(f"domain#{host}")},
                }
            },
        ]
        with aws_errors(self._what):
            try:
                self._client.transact_write_items(TransactItems=request)
                return _domain_item(item)
            except ClientError as exc:
                if not _conditional_failure(exc):
                    raise
        holder = self.domain_site(host)
        if holder == site:  # claimed by this site between the read and the write
            return self.claim_domain(host, site, status=status, scope=scope)
        raise DomainConflict(
            f"the domain {host!r} already belongs to site {holder!r}: release it there first"
        )

    @_routes
    def approve_domain(self, host: str, site: str) -> bool:
        return self._approve(host.lower().rstrip("."), site, None)

    def _approve(self, host: str, site: str, scope: str | None) -> bool:
        names = {"#site": "site", "#status": "status"}
        values = {":site": _s(site), ":approved": _s(str(DomainStatus.APPROVED))}
        update = "SET #status = :approved"
        if scope is not None:
            update += ", #scope = :scope"
            names["#scope"] = "scope"
            values[":scope"] = _s(scope)
        with aws_errors(self._what):
            try:
                self._client.update_item(
                    TableName=self.table, Key={"pk": _s(f"domain#{host}"), "sk": _s("#")},
                    UpdateExpression=update, ConditionExpression="#site = :site",
                    ExpressionAttributeNames=names, ExpressionAttributeValues=values)
            except ClientError as exc:
                if _conditional_failure(exc):
                    return False
                raise
        return True

    def get_domain(self, host: str) -> Domain | None:
        item = self._get(f"domain#{host.lower().rstrip('.')}", "#")
        return None if item is None else _domain_item(item)

    def list_domains(self, site: str) -> list[Domain]:
        found = [self.get_domain(host) for host in sorted(self._claimed(site))]
        return [claim for claim in found if claim is not None and claim.site == site]

    @_routes
    def release_domain(self, host: str, site: str) -> None:
        host = host.lower().rstrip(".")
        request = [
            {
                "Delete": {
                    "TableName": self.table,
                    "Key": {"pk": _s(f"domain#{host}"), "sk": _s("#")},
                    "ConditionExpression": "attribute_not_exists(pk) OR #site = :site",
                    "ExpressionAttributeNames": {"#site": "site"},
                    "ExpressionAttributeValues": {":site": _s(site)},
                }
            },
            {
                "Delete": {
                    "TableName": self.table,
                    "Key": {"pk": _s(f"site#{site}"), "sk": _s(f"domain#{host}")},
                }
            },
        ]
        with aws_errors(self._what):
            try:
                self._client.transact_write_items(TransactItems=request)
            except ClientError as exc:
                if not _conditional_failure(exc):
                    raise
                # another site holds it: leave their claim alone, drop only our mirror
                self._delete(f"site#{site}", f"domain#{host}")

    def domain_site(self, host: str) -> str | None:
        item = self._get(f"domain#{host.lower().rstrip('.')}", "#")
        return None if item is None else str(item["site"]["S"])

    # deployments ---------------------------------------------------------------------------
    def _deployment_item(self, deployment: Deployment) -> Item:
        item: Item = {
            "pk": _s(f"dep#{deployment.id}"),
            "sk": _s("#"),
            "gpk": _s(f"site#{deployment.site}"),
            "gsk": _s(deployment.id),
            "apk": _s("dep"),
            "status": _s(str(deployment.status)),
            "branch": _s(deployment.branch),
            "data": _json(deployment.to_dict()),
            # copied out so a heartbeat renews the lease alone (claim_lease), under conditions
            "runner": _s(deployment.runner),
            "lease_until": _n(float(deployment.lease_until)),
        }
        # `active` only while in flight: a put of a final status leaves by_active at once
        return {**item, **shape.index_attributes(item)}

    @staticmethod
    def _deployment(item: Item) -> Deployment:
        """The record, with the lease as last renewed (a renewal writes only the attributes)."""
        deployment = Deployment.from_dict(_load(item))
        if "runner" in item:
            deployment.runner = item["runner"]["S"]
        if "lease_until" in item:
            deployment.lease_until = float(item["lease_until"]["N"])
        return deployment

    def create_deployment(self, deployment: Deployment) -> None:
        if not self._put(self._deployment_item(deployment), "attribute_not_exists(pk)"):
            raise ConfigError(
                f"deployment id {deployment.id!r} already exists: make a new id for each one"
            )
        self._site_of[deployment.id] = deployment.site

    def get_deployment(self, deployment_id: str) -> Deployment:
        item = self._get(f"dep#{deployment_id}", "#")
        if item is None:
            raise DeploymentNotFound(
                f"no deployment with id {deployment_id!r}: check the id in the deployment list"
            )
        return self._deployment(item)

    @_routes
    def update_deployment(
        self, deployment: Deployment, expect_status: Status | None = None,
        *, expect_runner: str | None = None,
    ) -> bool:
        """Write every field if the deployment exists (and, with expect_status, has that
        status, and with expect_runner, that lease holder); False otherwise, so a stale writer
        never resurrects or overwrites one."""
        condition = "attribute_exists(pk)"
        names: dict[str, str] = {}
        values: dict[str, dict[str, str]] = {}
        if expect_status is not None:
            condition += " AND #status = :expected"
            names["#status"] = "status"
            values[":expected"] = _s(str(expect_status))
        if expect_runner is not None:
            condition += " AND " + _runner_is(expect_runner, names, values)
        extra: dict[str, Any] = {}
        if names:
            extra = {"ExpressionAttributeNames": names, "ExpressionAttributeValues": values}
        return self._put(self._deployment_item(deployment), condition, **extra)

    def claim_lease(self, deployment_id: str, runner: str, until: float, *, holder: str,
                    held_until: float | None = None) -> bool:
        """One conditional update of the lease attributes: running, held by `holder` (and
        still ending at `held_until`)."""
        names = {"#status": "status", "#until": "lease_until"}
        values = {":running": _s(str(Status.RUNNING)), ":runner": _s(runner),
                  ":until": _n(float(until))}
        condition = "attribute_exists(pk) AND #status = :running AND " + _runner_is(
            holder, names, values)
        if held_until is not None:
            values[":held"] = _n(float(held_until))
            condition += " AND (#until = :held"
            condition += " OR attribute_not_exists(#until))" if not held_until else ")"
        with aws_errors(self._what):
            try:
                self._client.update_item(
                    TableName=self.table, Key=_key(f"dep#{deployment_id}", "#"),
                    UpdateExpression="SET #runner = :runner, #until = :until",
                    ConditionExpression=condition, ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values)
            except ClientError as exc:
                if _conditional_failure(exc):
                    return False
                raise
        return True

    def record_progress(self, deployment: Deployment) -> bool:
        """The record's JSON, under the condition of claim_lease; the lease attributes (what
        a renewal or a takeover writes) are left alone."""
        names = {"#data": "data", "#status": "status"}
        values = {":data": _json(deployment.to_dict()), ":running": _s(str(Status.RUNNING))}
        condition = "attribute_exists(pk) AND #status = :running AND " + _runner_is(
            deployment.runner, names, values)
        with aws_errors(self._what):
            try:
                self._client.update_item(
                    TableName=self.table, Key=_key(f"dep#{deployment.id}", "#"),
                    UpdateExpression="SET #data = :data", ConditionExpression=condition,
                    ExpressionAttributeNames=names, ExpressionAttributeValues=values)
            except ClientError as exc:
                if _conditional_failure(exc):
                    return False
                raise
        return True

    def list_deployments(
        self,
        site: str | None = None,
        *,
        branch: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Deployment]:
        """Newest first, from the index that holds only what is asked where there is one:
        in flight (receiving, queued, running) from the sparse `by_active`, a site's branch
        from `by_branch`; otherwise a site's from `by_site`, all from `by_time`, filtered.
        A table not yet brought up to date (_indexed) lists from the last two only."""
        if limit <= 0:
            return []
        if status in shape.IN_FLIGHT and self._indexed():
            return self._in_flight(Status(status), site, branch, limit, before)
        names: dict[str, str] = {}
        values: dict[str, dict[str, str]] = {}
        if site is None:
            index_name, key_condition = "by_time", "apk = :p"
            values[":p"] = _s("dep")
        elif branch is not None and self._indexed():
            index_name, key_condition = "by_branch", "bpk = :p"
            values[":p"] = _s(shape.branch_key(site, branch))
            branch = None  # the key says it
        else:
            index_name, key_condition = "by_site", "gpk = :p"
            values[":p"] = _s(f"site#{site}")
        if before is not None:
            key_condition += " AND gsk < :before"
            values[":before"] = _s(before)
        filters = []
        if branch is not None:
            filters.append("#branch = :branch")
            names["#branch"] = "branch"
            values[":branch"] = _s(branch)
        if status is not None:
            filters.append("#status = :status")
            names["#status"] = "status"
            values[":status"] = _s(str(status))
        args: dict[str, Any] = {
            "IndexName": index_name,
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
        }
        if filters:  # a filter applies after the read: page on until `limit` match
            args["FilterExpression"] = " AND ".join(filters)
            args["ExpressionAttributeNames"] = names
        else:
            args["Limit"] = limit
        found: list[Deployment] = []
        for item in self._query(**args):
            found.append(self._deployment(item))
            if len(found) >= limit:
                break
        return found

    def _in_flight(self, status: Status, site: str | None, branch: str | None, limit: int,
                   before: str | None) -> list[Deployment]:
        """The keys from `by_active` (eventually consistent), then the items themselves in
        one consistent BatchGetItem a page: one whose status moved since is left out, and
        the index is read on until `limit` still have `status`."""
        values = {":s": _s(str(status))}
        key_condition = "active = :s"
        if before is not None:
            key_condition += " AND gsk < :before"
            values[":before"] = _s(before)
        args: dict[str, Any] = {"IndexName": "by_active", "ScanIndexForward": False,
                                "KeyConditionExpression": key_condition, "Limit": limit}
        filters, names = [], {}
        if site is not None:  # gpk and branch are projected into the index, never change
            filters.append("gpk = :g")
            values[":g"] = _s(f"site#{site}")
        if branch is not None:
            filters.append("#branch = :b")
            names["#branch"] = "branch"
            values[":b"] = _s(branch)
        if filters:  # pages of small keys, so a site with none in flight is one call
            args["FilterExpression"] = " AND ".join(filters)
            args["Limit"] = max(limit, 100)
        if names:
            args["ExpressionAttributeNames"] = names
        keys = self._query(ExpressionAttributeValues=values, **args)
        found: list[Deployment] = []
        while len(found) < limit:
            page = [key["pk"]["S"] for key in itertools.islice(keys, min(100, limit - len(found)))]
            if not page:
                break
            items = {item["pk"]["S"]: item for item in self._batch_get([(pk, "#") for pk in page])}
            found += [self._deployment(items[pk]) for pk in page
                      if pk in items and items[pk]["status"]["S"] == status]
        return found

    def find_deployments(self, prefix: str, *, site: str | None = None,
                         limit: int = 10) -> list[Deployment]:
        if limit <= 0:
            return []
        index, partition = ("by_time", "apk") if site is None else ("by_site", "gpk")
        items = self._query(
            IndexName=index,
            KeyConditionExpression=f"{partition} = :p AND begins_with(gsk, :prefix)",
            ExpressionAttributeValues={":p": _s("dep" if site is None else f"site#{site}"),
                                       ":prefix": _s(prefix)},
            ScanIndexForward=False, Limit=limit)
        found: list[Deployment] = []
        for item in items:
            found.append(self._deployment(item))
            if len(found) >= limit:
                break
        return found

    # aliases -------------------------------------------------------------------------------
    @staticmethod
    def _alias(site: str, item: Item) -> Alias:
        return Alias(
            site=site,
            name=item["sk"]["S"].removeprefix("alias#"),
            deployment_id=item["deployment_id"]["S"],
            moved_by=item["moved_by"]["S"],
            updated=float(item["updated"]["N"]),
        )

    def get_alias(self, site: str, name: str) -> Alias | None:
        item = self._get(f"site#{site}", f"alias#{name}")
        return None if item is None else self._alias(site, item)

    def list_aliases(self, site: str) -> list[Alias]:
        items = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :alias)",
            ExpressionAttributeValues={":pk": _s(f"site#{site}"), ":alias": _s("alias#")},
            ConsistentRead=True,
        )
        return [self._alias(site, item) for item in items]

    @_routes
    def move_alias(self, site: str, name: str, deployment_id: str, moved_by: str) -> bool:
        """Compare-and-set in one conditional put: absent, or last moved by an older id."""
        item = {
            "pk": _s(f"site#{site}"),
            "sk": _s(f"alias#{name}"),
            "deployment_id": _s(deployment_id),
            "moved_by": _s(moved_by),
            "updated": _n(time.time()),
        }
        return self._put(
            item,
            "attribute_not_exists(pk) OR moved_by < :moved_by",
            ExpressionAttributeValues={":moved_by": _s(moved_by)},
        )

    @_routes
    def delete_alias(self, site: str, name: str) -> None:
        self._delete(f"site#{site}", f"alias#{name}")

    # logs ----------------------------------------------------------------------------------
    def _site_for(self, deployment_id: str) -> str:
        if deployment_id not in self._site_of:
            self._site_of[deployment_id] = self.get_deployment(deployment_id).site
        return self._site_of[deployment_id]

    def _reserve_seq(self, deployment_id: str, count: int) -> int:
        """Atomically take `count` numbers from the log's counter; returns the last one."""
        with aws_errors(self._what):
            response = self._client.update_item(
                TableName=self.table,
                Key={"pk": _s(f"dep#{deployment_id}"), "sk": _s("logseq")},
                UpdateExpression="ADD #n :count",
                ExpressionAttributeNames={"#n": "n"},
                ExpressionAttributeValues={":count": _n(count)},
                ReturnValues="UPDATED_NEW",
            )
        return int(response["Attributes"]["n"]["N"])

    def append_logs(self, lines: list[LogLine]) -> None:
        by_deployment: dict[str, list[LogLine]] = {}
        for line in lines:
            by_deployment.setdefault(line.deployment_id, []).append(line)
        items: list[Item] = []
        for deployment_id, group in by_deployment.items():
            site = self._site_for(deployment_id)
            last = self._reserve_seq(deployment_id, len(group))
            for seq, line in enumerate(group, start=last - len(group) + 1):
                line.seq = seq
                text = " ".join(
                    [line.message, line.stage, line.level, json.dumps(line.fields)]
                ).lower()
                items.append(
                    {
                        "pk": _s(f"logs#{site}"),
                        "sk": _s(f"{deployment_id}#{seq:0{_SEQ_WIDTH}d}"),
                        "text": _s(text),
                        "data": _json(line.to_dict()),
                    }
                )
        for start in range(0, len(items), 25):
            pending: dict[str, Any] = {
                self.table: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]
            }
            with aws_errors(self._what):
                for attempt in range(8):
                    response = self._client.batch_write_item(RequestItems=pending)
                    pending = response.get("UnprocessedItems") or {}
                    if not pending:
                        break
                    time.sleep(0.05 * 2**attempt)

    def get_logs(self, deployment_id: str, after: int = 0, limit: int = 10_000) -> list[LogLine]:
        try:
            site = self._site_for(deployment_id)
        except DeploymentNotFound:
            return []
        items = self._query(
            KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
            ExpressionAttributeValues={
                ":pk": _s(f"logs#{site}"),
                ":low": _s(f"{deployment_id}#{after + 1:0{_SEQ_WIDTH}d}"),
                ":high": _s(f"{deployment_id}#{'9' * _SEQ_WIDTH}"),
            },
            ConsistentRead=True,
        )
        lines: list[LogLine] = []
        for item in items:
            lines.append(LogLine(**_load(item)))
            if len(lines) >= limit:
                break
        return lines

    def search_logs(self, site: str, query: str, limit: int = 100) -> list[LogLine]:
        """Lines whose text holds every word of the query, newest first (a filtered scan)."""
        words = query.lower().split()
        if not words or limit <= 0:
            return []
        values = {":pk": _s(f"logs#{site}")}
        names = {"#text": "text"}
        clauses = []
        for index, word in enumerate(words):
            values[f":w{index}"] = _s(word)
            clauses.append(f"contains(#text, :w{index})")
        items = self._query(
            KeyConditionExpression="pk = :pk",
            FilterExpression=" AND ".join(clauses),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ScanIndexForward=False,
        )
        lines: list[LogLine] = []
        for item in items:
            lines.append(LogLine(**_load(item)))
            if len(lines) >= limit:
                break
        return lines

    # notification endpoints ------------------------------------------------------------------
    def _endpoint_item(self, endpoint: NotifyEndpoint) -> Item:
        return {**_key(f"site#{endpoint.site}", f"notify#{endpoint.id}"),
                "data": _json(endpoint.to_dict(secret=True))}

    def put_endpoint(self, endpoint: NotifyEndpoint) -> None:
        self._put(self._endpoint_item(endpoint))

    def update_endpoint(self, endpoint: NotifyEndpoint) -> bool:
        return self._put(self._endpoint_item(endpoint), "attribute_exists(pk)")

    def list_endpoints(self, site: str) -> list[NotifyEndpoint]:
        items = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :notify)",
            ExpressionAttributeValues={":pk": _s(f"site#{site}"), ":notify": _s("notify#")},
            ConsistentRead=True,
        )
        found = [NotifyEndpoint.from_dict(_load(item)) for item in items]
        return sorted(found, key=lambda e: (e.created, e.id))

    def delete_endpoint(self, site: str, endpoint_id: str) -> bool:
        with aws_errors(self._what):
            try:
                self._client.delete_item(
                    TableName=self.table, Key=_key(f"site#{site}", f"notify#{endpoint_id}"),
                    ConditionExpression="attribute_exists(pk)")
            except ClientError as exc:
                if _conditional_failure(exc):
                    return False
                raise
        self._delete_keys(self._delivery_keys(endpoint_id))
        return True

    def _delivery_keys(self, endpoint_id: str) -> list[tuple[str, str]]:
        pk = f"deliveries#{endpoint_id}"
        return [(pk, item["sk"]["S"]) for item in self._partition(pk, ProjectionExpression="sk")]

    def append_delivery(self, delivery: Delivery) -> None:
        sk = f"{_delivery_sk(delivery.time)}#{os.urandom(6).hex()}"
        self._put({**_key(f"deliveries#{delivery.endpoint_id}", sk),
                   "data": _json(delivery.to_dict()),
                   TTL_ATTRIBUTE: _n(int(delivery.time + DELIVERY_RETENTION))})

    def list_deliveries(self, endpoint_id: str, limit: int = 50) -> list[Delivery]:
        # DynamoDB deletes an expired item some time (up to days) after its TTL: the key
        # condition hides it meanwhile, as the sort key starts with the delivery's time
        found: list[Delivery] = []
        for item in self._query(
                KeyConditionExpression="pk = :pk AND sk >= :kept",
                ExpressionAttributeValues={
                    ":pk": _s(f"deliveries#{endpoint_id}"),
                    ":kept": _s(_delivery_sk(time.time() - DELIVERY_RETENTION))},
                ConsistentRead=True, ScanIndexForward=False):
            found.append(Delivery.from_dict(_load(item)))
            if len(found) >= limit:
                break
        return found

    def prune_deliveries(self, endpoint_id: str, before: float, keep: int) -> int:
        """Records written before the TTL attribute existed never expire by themselves, and
        the count bound has no TTL: one keys-only Query of the partition, newest first."""
        pk = f"deliveries#{endpoint_id}"
        cutoff = _delivery_sk(before)
        doomed = [(pk, sk) for n, sk in enumerate(
                      item["sk"]["S"] for item in self._partition(
                          pk, ProjectionExpression="sk", ScanIndexForward=False))
                  if n >= keep or sk < cutoff]
        self._delete_keys(doomed)
        return len(doomed)

    # tokens --------------------------------------------------------------------------------
    @staticmethod
    def _token_data(token: Token) -> dict[str, Any]:
        return {
            "id": token.id,
            "name": token.name,
            "hash": token.hash,
            "site": token.site,
            "scopes": token.scopes,
            "created": token.created,
        }

    def put_token(self, token: Token) -> None:
        data = _json(self._token_data(token))
        old = self._get("tokens", token.id)
        request: list[dict[str, Any]] = [
            {"Put": {"TableName": self.table, "Item": {**_key("tokens", token.id), "data": data}}},
            {
                "Put": {
                    "TableName": self.table,
                    "Item": {**_key(f"tokenhash#{token.hash}", "#"), "data": data},
                }
            },
        ]
        if old is not None and _load(old)["hash"] != token.hash:
            old_key = _key(f"tokenhash#{_load(old)['hash']}", "#")
            request.append({"Delete": {"TableName": self.table, "Key": old_key}})
        with aws_errors(self._what):
            self._client.transact_write_items(TransactItems=request)

    def find_token(self, token_hash: str) -> Token | None:
        item = self._get(f"tokenhash#{token_hash}", "#")
        return None if item is None else Token(**_load(item))

    def list_tokens(self) -> list[Token]:
        return [Token(**_load(item)) for item in self._partition("tokens")]

    def delete_token(self, token_id: str) -> None:
        item = self._get("tokens", token_id)
        if item is None:
            return
        request = [
            {"Delete": {"TableName": self.table, "Key": _key("tokens", token_id)}},
            {
                "Delete": {
                    "TableName": self.table,
                    "Key": _key(f"tokenhash#{_load(item)['hash']}", "#"),
                }
            },
        ]
        with aws_errors(self._what):
            self._client.transact_write_items(TransactItems=request)

    # dedup ---------------------------------------------------------------------------------
    def remember(self, key: str) -> bool:
        """One conditional put: only the first caller for a key gets True."""
        item = {"pk": _s(f"seen#{key}"), "sk": _s("#"), "at": _n(time.time())}
        return self._put(item, "attribute_not_exists(pk)")

    def forget(self, key: str) -> None:
        self._delete(f"seen#{key}", "#")

    def recalls(self, key: str) -> bool:
        return self._get(f"seen#{key}", "#") is not None

    # prune's sweeps ------------------------------------------------------------------------
    def put_sweep(self, sweep: Sweep) -> None:
        self._put({**_key("sweeps", sweep.id), "data": _json(sweep.to_dict())})

    def list_sweeps(self) -> list[Sweep]:
        return [Sweep.from_dict(_load(item)) for item in self._partition("sweeps")]

    def delete_sweep(self, sweep_id: str) -> None:
        self._delete("sweeps", sweep_id)

    def close(self) -> None:
        self._client.close()


def _runner_is(runner: str, names: dict[str, str], values: dict[str, dict[str, str]]) -> str:
    """A condition on the lease holder; "" also matches an item written before leases."""
    names["#runner"] = "runner"
    values[":holder"] = _s(runner)
    if runner:
        return "#runner = :holder"
    return "(#runner = :holder OR attribute_not_exists(#runner))"


def _delivery_sk(at: float) -> str:
    """The time part of a delivery's sort key: fixed width, so keys sort by time."""
    return f"{at:020.6f}"


def _key(pk: str, sk: str) -> Item:
    return {"pk": _s(pk), "sk": _s(sk)}

