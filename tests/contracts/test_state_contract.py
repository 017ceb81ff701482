"""The StateStore contract, run against every backend: SQLite and DynamoDB (on moto)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pushsite.errors import ConfigError, DeploymentNotFound, DomainConflict, SiteNotFound
from pushsite.ids import new_id
from pushsite.model import (
    ADMIN_SCOPE,
    PRODUCTION,
    Deployment,
    DomainStatus,
    LogLine,
    Site,
    SiteSettings,
    Status,
    Token,
    WebhookSettings,
    branch_alias,
)
from pushsite.state import SITE_PAGE, StateStore, Sweep, every_site, open_state_store

BACKENDS = ["sqlite", "dynamodb"]  # every backend, unconditionally: a rename fails loudly


@pytest.fixture(params=BACKENDS)
def state(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StateStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('state')}/state.db"
    else:
        url = request.getfixturevalue("dynamodb_url")
    store = open_state_store(url)
    try:
        yield store
    finally:
        store.close()


def _deployment(site: str = "blog", branch: str = "main", **fields: object) -> Deployment:
    return Deployment(id=new_id(), site=site, branch=branch, **fields)  # type: ignore[arg-type]


def _line(deployment_id: str, message: str, stage: str = "read") -> LogLine:
    return LogLine(deployment_id, 1.0, "info", stage, message, {"n": 1})


# sites -------------------------------------------------------------------------------------
def test_site_round_trip_and_listing(state: StateStore) -> None:
    settings = SiteSettings(tags=True, webhook=WebhookSettings(
        "https://git.example", "t0k", repo="acme/site", last_ignored_repo="mallory/site"),
        domain_token="c0ffee")
    state.put_site(Site("blog", production_branch="trunk", settings=settings))
    state.put_site(Site("docs"))
    blog = state.get_site("blog")
    assert (blog.production_branch, blog.settings) == ("trunk", settings)
    assert state.get_site("docs").settings == SiteSettings()
    assert [s.name for s in state.list_sites(limit=SITE_PAGE)] == ["blog", "docs"]
    state.put_site(Site("blog", production_branch="main"))
    assert state.get_site("blog").production_branch == "main"


def test_sites_are_listed_a_page_at_a_time_by_name_with_their_domains(
        state: StateStore) -> None:
    for name in ("delta", "alpha", "echo", "charlie", "bravo"):
        state.put_site(Site(name))
    state.claim_domain("www.bravo.example", "bravo")
    state.claim_domain("bravo.example", "bravo")
    state.claim_domain("echo.example", "echo")
    first = state.list_sites(limit=2)
    assert [s.name for s in first] == ["alpha", "bravo"]
    assert first[1].domains == ["bravo.example", "www.bravo.example"]
    rest = state.list_sites(after=first[-1].name, limit=2)
    assert [s.name for s in rest] == ["charlie", "delta"]
    last = state.list_sites(after="delta", limit=2)
    assert [(s.name, s.domains) for s in last] == [("echo", ["echo.example"])]
    assert state.list_sites(after="echo", limit=2) == []
    assert [s.name for s in state.list_sites(after="b", limit=SITE_PAGE)] == [
        "bravo", "charlie", "delta", "echo"]
    with pytest.raises(ConfigError, match="page of sites"):
        state.list_sites(limit=SITE_PAGE + 1)  # refused, never cut short


def test_every_site_walks_past_one_page(state: StateStore) -> None:
    """Prune and the typo hints need every site: no cap at a page (issue 12's rule)."""
    names = [f"s{n:04d}" for n in range(SITE_PAGE + 3)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: state.put_site(Site(name)), names))
    assert [s.name for s in every_site(state)] == names


def test_site_heads_are_each_sites_newest_and_live_deployment(state: StateStore) -> None:
    for name in ("blog", "docs", "empty"):
        state.put_site(Site(name))
    live, newer = _deployment("blog"), _deployment("blog", "feature")
    docs_live, docs_gone = _deployment("docs"), _deployment("docs")
    for deployment in (live, newer, docs_live, docs_gone):
        state.create_deployment(deployment)
    state.move_alias("blog", PRODUCTION, live.id, live.id)
    state.move_alias("blog", branch_alias("feature"), newer.id, newer.id)
    state.move_alias("docs", PRODUCTION, docs_live.id, docs_live.id)
    heads = state.site_heads(["blog", "docs", "empty", "nowhere", "blog"])
    assert set(heads) == {"blog", "docs"}
    assert heads["blog"].newest is not None and heads["blog"].newest.id == newer.id
    assert heads["blog"].live is not None and heads["blog"].live.id == live.id
    assert heads["docs"].newest is not None and heads["docs"].newest.id == docs_gone.id
    assert heads["docs"].live is not None and heads["docs"].live.id == docs_live.id
    assert state.site_heads([]) == {}


def test_unknown_site_is_site_not_found(state: StateStore) -> None:
    with pytest.raises(SiteNotFound, match="nope"):
        state.get_site("nope")


def test_delete_site_removes_everything_it_owns(state: StateStore) -> None:
    state.put_site(Site("blog"))
    state.put_site(Site("docs"))
    state.claim_domain("blog.example.com", "blog")
    mine, theirs = _deployment("blog"), _deployment("docs")
    state.create_deployment(mine)
    state.create_deployment(theirs)
    state.move_alias("blog", PRODUCTION, mine.id, mine.id)
    state.append_logs([_line(mine.id, "hello blog")])
    state.delete_site("blog")
    with pytest.raises(SiteNotFound):
        state.get_site("blog")
    assert state.domain_site("blog.example.com") is None
    assert state.get_alias("blog", PRODUCTION) is None
    with pytest.raises(DeploymentNotFound):
        state.get_deployment(mine.id)
    assert state.search_logs("blog", "hello") == []
    assert state.get_deployment(theirs.id).site == "docs"
    assert [s.name for s in state.list_sites(limit=SITE_PAGE)] == ["docs"]


# domains -----------------------------------------------------------------------------------
def test_domain_claimed_by_another_site_conflicts(state: StateStore) -> None:
    state.put_site(Site("blog"))
    state.put_site(Site("docs"))
    state.claim_domain("www.example.com", "blog")
    state.claim_domain("www.example.com", "blog")  # idempotent for the holder
    with pytest.raises(DomainConflict, match="www.example.com"):
        state.claim_domain("www.example.com", "docs")
    assert state.domain_site("www.example.com") == "blog"
    assert state.get_site("blog").domains == ["www.example.com"]


def test_release_by_another_site_leaves_the_claim(state: StateStore) -> None:
    state.claim_domain("www.example.com", "blog")
    state.release_domain("www.example.com", "docs")
    assert state.domain_site("www.example.com") == "blog"
    state.release_domain("www.example.com", "blog")
    assert state.domain_site("www.example.com") is None
    state.claim_domain("www.example.com", "docs")
    assert state.domain_site("www.example.com") == "docs"


def test_a_claim_is_pending_until_approved_and_keeps_its_scope(state: StateStore) -> None:
    state.put_site(Site("blog"))
    state.put_site(Site("docs"))
    claim = state.claim_domain("www.example.com", "blog", scope="site:blog")
    assert (claim.host, claim.site, claim.status, claim.scope) == (
        "www.example.com", "blog", DomainStatus.PENDING, "site:blog")
    assert claim.claimed > 0 and not claim.approved
    # a pending claim holds the name as firmly as an approved one
    with pytest.raises(DomainConflict, match="blog"):
        state.claim_domain("www.example.com", "docs", status=DomainStatus.APPROVED)
    assert state.approve_domain("www.example.com", "docs") is False  # not its claim
    assert state.get_domain("www.example.com") == claim
    assert state.approve_domain("www.example.com", "blog") is True
    approved = state.get_domain("www.example.com")
    assert approved is not None and approved.approved and approved.scope == "site:blog"
    # claiming again as pending never takes the approval back
    assert state.claim_domain("www.example.com", "blog").approved
    assert state.get_domain("nowhere.example.com") is None


def test_an_approved_claim_approves_a_pending_one_with_its_scope(state: StateStore) -> None:
    state.put_site(Site("blog"))
    state.claim_domain("b.example.com", "blog", scope="site:blog")
    state.claim_domain("a.example.com", "blog", status=DomainStatus.APPROVED, scope=ADMIN_SCOPE)
    again = state.claim_domain("b.example.com", "blog", status=DomainStatus.APPROVED)
    assert (again.status, again.scope) == (DomainStatus.APPROVED, ADMIN_SCOPE)
    assert [(d.host, d.status) for d in state.list_domains("blog")] == [
        ("a.example.com", DomainStatus.APPROVED), ("b.example.com", DomainStatus.APPROVED)]
    assert state.get_site("blog").domains == ["a.example.com", "b.example.com"]
    state.release_domain("a.example.com", "blog")
    assert [d.host for d in state.list_domains("blog")] == ["b.example.com"]
    assert state.list_domains("docs") == []


def test_sqlite_claims_from_before_approvals_stay_served(tmp_path: Path) -> None:
    """An older database's domains table (host, site) gains status, scope and claimed; the
    claims in it were served, so they stay approved."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE domains (host TEXT PRIMARY KEY, site TEXT NOT NULL)")
        db.execute("INSERT INTO domains VALUES ('www.example.com', 'blog')")
    db.close()
    store = open_state_store(f"sqlite:///{path}")
    try:
        claim = store.get_domain("www.example.com")
        assert claim is not None and (claim.site, claim.status) == ("blog", "approved")
        assert store.claim_domain("new.example.com", "blog").status == DomainStatus.PENDING
    finally:
        store.close()


# deployments -------------------------------------------------------------------------------
def test_deployment_round_trip(state: StateStore) -> None:
    deployment = _deployment(commit="abc123", message="fix typo", files=3, bytes_in=1234)
    state.create_deployment(deployment)
    loaded = state.get_deployment(deployment.id)
    assert loaded.to_dict() == deployment.to_dict()
    with pytest.raises(DeploymentNotFound):
        state.get_deployment(new_id())


def test_update_with_expect_status_is_compare_and_set(state: StateStore) -> None:
    deployment = _deployment()
    state.create_deployment(deployment)
    deployment.status = Status.RUNNING
    assert state.update_deployment(deployment, expect_status=Status.QUEUED) is True
    deployment.status = Status.FAILED
    deployment.error = "second runner"
    assert state.update_deployment(deployment, expect_status=Status.QUEUED) is False
    stored = state.get_deployment(deployment.id)
    assert (stored.status, stored.error) == (Status.RUNNING, "")
    deployment.error_kind = "BundleRejected"
    assert state.update_deployment(deployment) is True
    stored = state.get_deployment(deployment.id)
    assert (stored.status, stored.error_kind) == (Status.FAILED, "BundleRejected")


def test_list_deployments_newest_first_with_filters_and_paging(state: StateStore) -> None:
    made = [
        _deployment("blog", "main"),
        _deployment("blog", "feature"),
        _deployment("docs", "main"),
        _deployment("blog", "main"),
    ]
    for deployment in made:
        state.create_deployment(deployment)
    made[3].status = Status.READY
    state.update_deployment(made[3])
    ids = [d.id for d in made]
    assert [d.id for d in state.list_deployments("blog")] == [ids[3], ids[1], ids[0]]
    assert [d.id for d in state.list_deployments()] == ids[::-1]
    assert [d.id for d in state.list_deployments("blog", branch="main")] == [ids[3], ids[0]]
    assert [d.id for d in state.list_deployments(status=Status.READY)] == [ids[3]]
    assert [d.id for d in state.list_deployments("blog", limit=1)] == [ids[3]]
    assert [d.id for d in state.list_deployments("blog", before=ids[3])] == [ids[1], ids[0]]


def test_find_deployments_by_id_prefix(state: StateStore) -> None:
    stem = "z" + new_id()[-9:]  # 10 characters no other test's ids start with
    ids = [stem + "a" + "0" * 15, stem + "a" + "1" * 15, stem + "b" + "0" * 15]
    for deployment_id, site in zip(ids, ["blog", "docs", "blog"], strict=True):
        state.create_deployment(Deployment(id=deployment_id, site=site, branch="main"))
    assert [d.id for d in state.find_deployments(stem)] == ids[::-1]
    assert [d.id for d in state.find_deployments(stem + "a")] == [ids[1], ids[0]]
    assert [d.id for d in state.find_deployments(stem + "a", limit=1)] == [ids[1]]
    assert [d.id for d in state.find_deployments(stem + "a", site="blog")] == [ids[0]]
    assert [d.id for d in state.find_deployments(stem, site="blog")] == [ids[2], ids[0]]
    assert [d.id for d in state.find_deployments(ids[2])] == [ids[2]]
    assert state.find_deployments(stem + "c") == []
    assert state.find_deployments(stem + "b", site="docs") == []
    assert state.find_deployments(stem, limit=0) == []


# aliases -----------------------------------------------------------------------------------
def test_older_push_never_moves_alias(state: StateStore) -> None:
    older, newer = new_id(), new_id()
    assert state.move_alias("blog", PRODUCTION, newer, newer) is True
    assert state.move_alias("blog", PRODUCTION, older, older) is False
    alias = state.get_alias("blog", PRODUCTION)
    assert alias is not None
    assert (alias.deployment_id, alias.moved_by) == (newer, newer)
    assert state.move_alias("blog", PRODUCTION, newer, newer) is False  # not strictly newer


def test_rollback_with_fresh_id_wins(state: StateStore) -> None:
    first, second = new_id(), new_id()
    state.move_alias("blog", PRODUCTION, first, first)
    state.move_alias("blog", PRODUCTION, second, second)
    rollback = new_id()
    assert state.move_alias("blog", PRODUCTION, first, rollback) is True
    alias = state.get_alias("blog", PRODUCTION)
    assert alias is not None
    assert (alias.deployment_id, alias.moved_by) == (first, rollback)
    late = second  # the second deployment finishing late must not undo the rollback
    assert state.move_alias("blog", PRODUCTION, late, late) is False


def test_concurrent_alias_moves_leave_the_newest(state: StateStore) -> None:
    ids = [new_id() for _ in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda i: state.move_alias("blog", PRODUCTION, i, i), reversed(ids)))
    alias = state.get_alias("blog", PRODUCTION)
    assert alias is not None and alias.deployment_id == ids[-1]


def test_aliases_are_per_site_and_deletable(state: StateStore) -> None:
    a, b = new_id(), new_id()
    state.move_alias("blog", PRODUCTION, a, a)
    state.move_alias("blog", branch_alias("feature"), b, b)
    state.move_alias("docs", PRODUCTION, b, b)
    names = sorted(alias.name for alias in state.list_aliases("blog"))
    assert names == ["branch/feature", PRODUCTION]
    state.delete_alias("blog", branch_alias("feature"))
    assert state.get_alias("blog", branch_alias("feature")) is None
    assert [alias.name for alias in state.list_aliases("docs")] == [PRODUCTION]


# logs --------------------------------------------------------------------------------------
def test_log_seq_counts_up_per_deployment(state: StateStore) -> None:
    one, two = _deployment(), _deployment()
    state.create_deployment(one)
    state.create_deployment(two)
    batch = [_line(one.id, "a"), _line(two.id, "x"), _line(one.id, "b")]
    state.append_logs(batch)
    assert [line.seq for line in batch] == [1, 1, 2]
    state.append_logs([_line(one.id, "c")])
    logs = state.get_logs(one.id)
    assert [(line.seq, line.message) for line in logs] == [(1, "a"), (2, "b"), (3, "c")]
    assert logs[0].fields == {"n": 1}
    assert [line.message for line in state.get_logs(one.id, after=1)] == ["b", "c"]
    assert [line.message for line in state.get_logs(one.id, after=1, limit=1)] == ["b"]
    assert [line.message for line in state.get_logs(two.id)] == ["x"]


def test_concurrent_appends_get_distinct_seqs(state: StateStore) -> None:
    deployment = _deployment()
    state.create_deployment(deployment)
    batches = [[_line(deployment.id, f"{w}-{i}") for i in range(5)] for w in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(state.append_logs, batches))
    # the property is the counter's: every line got its own number, none skipped (what is
    # read back is checked serially above; moto's store itself is not safe under this load)
    assigned = sorted(line.seq for batch in batches for line in batch)
    assert assigned == list(range(1, 21))


def test_search_logs_finds_words_newest_first(state: StateStore) -> None:
    old, new = _deployment(), _deployment()
    state.create_deployment(old)
    state.create_deployment(new)
    state.append_logs([_line(old.id, "upload failed for images"), _line(old.id, "all good")])
    state.append_logs([_line(new.id, "upload failed again"), _line(new.id, "done")])
    found = state.search_logs("blog", "upload failed")
    assert [(line.deployment_id, line.message) for line in found] == [
        (new.id, "upload failed again"),
        (old.id, "upload failed for images"),
    ]
    assert len(state.search_logs("blog", "failed", limit=1)) == 1
    assert state.search_logs("docs", "failed") == []


def test_search_logs_keeps_to_its_site_whose_name_others_share_words_with(
        state: StateStore) -> None:
    """Site names hold words of each other ("my-blog", "my-blog-2", "blog"): a search finds
    only its own site's lines, and a page (limit) is the first lines of a longer one."""
    lines: dict[str, list[str]] = {}
    for site in ("my-blog", "my-blog-2", "blog", "my"):
        deployment = _deployment(site)
        state.create_deployment(deployment)
        state.append_logs([_line(deployment.id, f"upload failed {n} in {site}")
                           for n in range(4)])
        lines[site] = [f"upload failed {n} in {site}" for n in reversed(range(4))]
    for site, expected in lines.items():
        assert [line.message for line in state.search_logs(site, "failed")] == expected
        assert [line.message for line in state.search_logs(site, "failed", limit=3)] == (
            expected[:3])
    assert state.search_logs("my-blog", "my-blog-2") == []
    assert state.search_logs("blog", "my") == []


# tokens and dedup --------------------------------------------------------------------------
def test_tokens_found_by_hash(state: StateStore) -> None:
    admin = Token(id=new_id(), name="ci", hash="h1", scopes=["deploy", "admin"])
    scoped = Token(id=new_id(), name="blog-ci", hash="h2", site="blog")
    state.put_token(admin)
    state.put_token(scoped)
    found = state.find_token("h2")
    assert found is not None and (found.id, found.site, found.scopes) == (
        scoped.id,
        "blog",
        ["deploy"],
    )
    assert state.find_token("nope") is None
    assert {t.id for t in state.list_tokens()} == {admin.id, scoped.id}
    state.delete_token(admin.id)
    assert state.find_token("h1") is None
    assert [t.id for t in state.list_tokens()] == [scoped.id]


def test_remember_is_true_only_once(state: StateStore) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(state.remember, ["delivery-1"] * 8))
    assert results.count(True) == 1
    assert state.remember("delivery-1") is False
    assert state.remember("delivery-2") is True


def test_recalls_reads_what_remember_wrote_and_writes_nothing(state: StateStore) -> None:
    assert state.recalls("session-ended:a") is False
    assert state.recalls("session-ended:a") is False  # asking did not record it
    assert state.remember("session-ended:a") is True
    assert state.recalls("session-ended:a") is True
    assert state.recalls("session-ended:b") is False


# notification endpoints and their delivery logs -----------------------------------------------
def test_endpoints_round_trip_update_delete_and_go_with_their_site(state: StateStore) -> None:
    from pushsite.model import Delivery, NotifyEndpoint

    state.put_site(Site("blog"))
    state.put_site(Site("docs"))
    first = NotifyEndpoint("ep_1", "blog", "https://a.example/hook", "whsec_AAAA",
                           ["deployment.failed"], "slack", created=1.0)
    second = NotifyEndpoint("ep_2", "blog", "https://b.example/hook", "whsec_BBBB", created=2.0)
    other = NotifyEndpoint("ep_3", "docs", "https://c.example/hook", "whsec_CCCC", created=3.0)
    for endpoint in (second, first, other):
        state.put_endpoint(endpoint)
    assert state.list_endpoints("blog") == [first, second]  # oldest first, secrets kept
    first.failing_since, first.disabled = 5.0, True
    assert state.update_endpoint(first)
    assert state.list_endpoints("blog")[0].disabled
    now = time.time()
    for n in range(3):
        state.append_delivery(Delivery("ep_1", "msg_1", "deployment.failed", n + 1,
                                       "retrying", 500, 0.01, "answered 500", time=now + n))
    state.append_delivery(Delivery("ep_2", "msg_2", "deployment.queued", 1, "delivered", 204,
                                   time=now + 10))
    log = state.list_deliveries("ep_1")
    assert [d.attempt for d in log] == [3, 2, 1]  # newest first
    assert log[0] == Delivery("ep_1", "msg_1", "deployment.failed", 3, "retrying", 500, 0.01,
                              "answered 500", now + 2)
    assert [d.attempt for d in state.list_deliveries("ep_1", limit=2)] == [3, 2]
    assert state.delete_endpoint("blog", "ep_1")
    assert not state.delete_endpoint("blog", "ep_1")
    assert not state.delete_endpoint("docs", "ep_2")  # another site's id
    assert state.list_deliveries("ep_1") == []
    assert not state.update_endpoint(first)  # a removal stands against a late update
    assert state.list_endpoints("blog") == [second]
    state.delete_site("blog")
    assert state.list_endpoints("blog") == [] and state.list_deliveries("ep_2") == []
    assert state.list_endpoints("docs") == [other]


def _stored_deliveries(state: StateStore, endpoint_id: str) -> list[dict[str, Any]]:
    """Every delivery record the backend holds for an endpoint, expired or not, as stored
    (what list_deliveries hides cannot be seen through the protocol)."""
    from pushsite.state.dynamodb import DynamoState
    from pushsite.state.sqlite import SqliteState

    if isinstance(state, SqliteState):
        return [{"data": json.loads(row[0])} for row in state._query(
            "SELECT data FROM deliveries WHERE endpoint_id = ?", (endpoint_id,))]
    assert isinstance(state, DynamoState)
    return [{"data": json.loads(item["data"]["S"]),
             "expires": int(item["expires"]["N"]) if "expires" in item else None}
            for item in state._partition(f"deliveries#{endpoint_id}")]


def test_delivery_records_expire_after_their_retention_and_keep_a_bounded_count(
        state: StateStore) -> None:
    from pushsite.model import Delivery
    from pushsite.state import DELIVERY_RETENTION

    now = time.time()
    day = 86400.0

    def attempt(endpoint: str, n: int, at: float) -> Delivery:
        return Delivery(endpoint, f"msg_{n}", "deployment.succeeded", 1, "delivered", 204,
                        time=at)

    old, recent = now - DELIVERY_RETENTION - day, now - DELIVERY_RETENTION + day
    for n, at in enumerate((old - 1, old, recent, now)):
        state.append_delivery(attempt("ep_a", n, at))
    # past its retention a record is never listed, whether the backend deleted it yet or not
    assert [d.message_id for d in state.list_deliveries("ep_a")] == ["msg_3", "msg_2"]
    for n in range(5):
        state.append_delivery(attempt("ep_b", n, now - 100 + n))
    # housekeeping: the old ones go (SQLite may have dropped them already on the append)
    held = len(_stored_deliveries(state, "ep_a"))
    assert held in (2, 4)
    assert state.prune_deliveries("ep_a", now - DELIVERY_RETENTION, 100) == held - 2
    assert sorted(r["data"]["message_id"] for r in _stored_deliveries(state, "ep_a")) == [
        "msg_2", "msg_3"]
    assert state.prune_deliveries("ep_a", now - DELIVERY_RETENTION, 100) == 0
    # then all but the newest `keep`, one endpoint at a time
    assert state.prune_deliveries("ep_b", now - DELIVERY_RETENTION, 3) == 2
    assert [d.message_id for d in state.list_deliveries("ep_b")] == ["msg_4", "msg_3", "msg_2"]
    assert len(_stored_deliveries(state, "ep_b")) == 3
    assert [d.message_id for d in state.list_deliveries("ep_a")] == ["msg_3", "msg_2"]
    assert state.prune_deliveries("ep_none", now, 3) == 0


def test_dynamodb_delivery_records_carry_the_tables_ttl(dynamodb_url: str) -> None:
    """DynamoDB deletes them by itself: the table's TTL is on, each record has its expiry."""
    from pushsite.model import Delivery
    from pushsite.state import DELIVERY_RETENTION
    from pushsite.state.dynamodb import TTL_ATTRIBUTE, DynamoState

    state = open_state_store(dynamodb_url)
    try:
        assert isinstance(state, DynamoState)
        ttl = state._client.describe_time_to_live(TableName=state.table)["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", TTL_ATTRIBUTE)
        state.append_delivery(Delivery("ep_a", "msg_1", "deployment.queued", 1, "delivered",
                                       204, time=1_800_000_000.5))
        [record] = _stored_deliveries(state, "ep_a")
        assert record["expires"] == int(1_800_000_000.5 + DELIVERY_RETENTION)
        # a table made before records expired gets its TTL when opened with create=1
        older = "pushsite-older-" + state.table.rpartition("-")[2]
        state._client.create_table(
            TableName=older, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                       {"AttributeName": "sk", "KeyType": "RANGE"}])
        assert state._client.describe_time_to_live(TableName=older)[
            "TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"
        reopened = open_state_store(dynamodb_url.replace(state.table, older))
        reopened.close()
        assert state._client.describe_time_to_live(TableName=older)[
            "TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
    finally:
        state.close()


def test_sweep_records_round_trip_replace_and_delete(state: StateStore) -> None:
    assert state.list_sweeps() == []
    first = Sweep(new_id(), started=100.0, alive_until=130.0)
    second = Sweep(new_id(), started=101.0, alive_until=131.0, begun=2, ended=1)
    state.put_sweep(first)
    state.put_sweep(second)
    assert state.list_sweeps() == [first, second]
    first.begun, first.ended, first.finished = 3, 3, 140.5
    state.put_sweep(first)
    assert state.list_sweeps() == [first, second]
    state.delete_sweep(second.id)
    state.delete_sweep(second.id)  # absent: nothing to do
    assert state.list_sweeps() == [first]
