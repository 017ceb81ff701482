"""Issue 20, state at scale: the listings that missed 50 ms at 10,000 sites, held by their
structure, not by a timing. The SQL statements a listing runs are counted with sqlite3's trace
callback (they must not grow with the number of sites), and the log search's plan must walk
the full-text index newest first with no sort (EXPLAIN QUERY PLAN)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.requests import Request

from pushsite.ids import new_id
from pushsite.model import PRODUCTION, Deployment, LogLine, Site, Status, Token
from pushsite.state import SITE_PAGE
from pushsite.state.sqlite import SqliteState
from pushsite.web.dashboard import SITES_SHOWN, Dashboard, Visit
from pushsite.web.session import Session
from support.service import open_service


@contextmanager
def statements(state: SqliteState) -> Iterator[list[str]]:
    """Every SQL statement the state runs meanwhile, parameters filled in (not those a
    virtual table runs inside one: the trace marks them with a leading "--")."""
    ran: list[str] = []

    def traced(sql: str) -> None:
        if not sql.startswith("--"):
            ran.append(sql)

    state._db.set_trace_callback(traced)  # the one connection SqliteState holds
    try:
        yield ran
    finally:
        state._db.set_trace_callback(None)


def plan(state: SqliteState, sql: str) -> list[str]:
    return [row[3] for row in state._db.execute(f"EXPLAIN QUERY PLAN {sql}")]


def add_sites(state: SqliteState, first: int, count: int) -> None:
    """Sites with a live deployment, a newer one and a domain each."""
    for n in range(first, first + count):
        name = f"site-{n:03d}"
        state.put_site(Site(name))
        state.claim_domain(f"{name}.example", name)
        live, newer = (Deployment(new_id(), name, "main", status=Status.LIVE),
                       Deployment(new_id(), name, "main", status=Status.FAILED))
        state.create_deployment(live)
        state.create_deployment(newer)
        state.move_alias(name, PRODUCTION, live.id, live.id)


def sites_page(board: Dashboard, query: str = "") -> dict[str, object]:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [],
                       "query_string": query.encode()})
    admin = Token(new_id(), "admin", "h", scopes=["deploy", "admin"])
    return board.sites_page(Visit(request, Session(), admin, False)).context


def test_the_dashboards_sites_page_runs_as_many_statements_for_80_sites_as_for_3() -> None:
    with open_service() as service:
        state = service.state
        assert isinstance(state, SqliteState)
        board = Dashboard(service)
        add_sites(state, 0, 3)
        with statements(state) as few:
            shown = sites_page(board)
        assert [row["site"].name for row in shown["rows"]] == [  # type: ignore[attr-defined]
            "site-000", "site-001", "site-002"]
        add_sites(state, 3, 77)
        with statements(state) as many:
            first = sites_page(board)
        assert len(many) == len(few) <= 3, many  # was 4 a site: 320 for 80
        rows = first["rows"]
        assert isinstance(rows, list) and len(rows) == SITES_SHOWN
        assert first["next_after"] == f"site-{SITES_SHOWN - 1:03d}"
        for row in rows:
            assert row["live"].status is Status.LIVE and row["live"].site == row["site"].name
            assert row["newest"].status is Status.FAILED
        following = sites_page(board, f"after={first['next_after']}")
        names = [row["site"].name for row in following["rows"]]  # type: ignore[attr-defined]
        assert names == [f"site-{n:03d}" for n in range(SITES_SHOWN, 80)]
        assert following["next_after"] is None
        for sql in many:  # each a seek on an index: no table is read whole (only the list
            # of names passed in, json_each, and the names' own CTE are scanned)
            steps = plan(state, sql)
            assert not [step for step in steps if step.startswith("SCAN")
                        and "VIRTUAL TABLE" not in step and step != "SCAN n"], (sql, steps)


def test_a_page_of_sites_with_their_domains_is_two_statements(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "state.db")
    try:
        add_sites(state, 0, 120)
        with statements(state) as ran:
            page = state.list_sites(after="site-010", limit=SITE_PAGE)
        assert [s.name for s in page] == [f"site-{n:03d}" for n in range(11, 111)]
        assert all(s.domains == [f"{s.name}.example"] for s in page)
        assert len(ran) == 2, ran  # the page, its domains (was one domains query a site)
    finally:
        state.close()


def test_log_search_walks_the_index_newest_first_and_sorts_nothing(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "state.db")
    try:
        for site in ("blog", "docs"):
            deployment = Deployment(new_id(), site, "main")
            state.create_deployment(deployment)
            state.append_logs([LogLine(deployment.id, 1.0, "info", "read", f"read {n} files",
                                       {}) for n in range(30)])
        with statements(state) as ran:
            found = state.search_logs("blog", "read files", limit=5)
        assert [line.message for line in found] == [f"read {n} files" for n in
                                                   range(29, 24, -1)]
        (search,) = ran
        steps = plan(state, search)
        # the FTS table is the outer loop and hands its rows over in the result's order: it
        # was a join of every hit in any site, then a temp b-tree sorting them all
        assert "VIRTUAL TABLE" in steps[0], steps
        assert not any("TEMP B-TREE" in step for step in steps), steps
    finally:
        state.close()


_OLD_LOGS = """
CREATE TABLE logs (
    id INTEGER PRIMARY KEY, deployment_id TEXT NOT NULL, site TEXT NOT NULL,
    seq INTEGER NOT NULL, time REAL NOT NULL, level TEXT NOT NULL, stage TEXT NOT NULL,
    message TEXT NOT NULL, fields TEXT NOT NULL, UNIQUE (deployment_id, seq));
CREATE VIRTUAL TABLE logs_fts USING fts5(message, stage, content='logs', content_rowid='id');
CREATE TRIGGER logs_ai AFTER INSERT ON logs BEGIN
    INSERT INTO logs_fts(rowid, message, stage) VALUES (new.id, new.message, new.stage);
END;
CREATE TRIGGER logs_ad AFTER DELETE ON logs BEGIN
    INSERT INTO logs_fts(logs_fts, rowid, message, stage)
    VALUES ('delete', old.id, old.message, old.stage);
END;
INSERT INTO logs (deployment_id, site, seq, time, level, stage, message, fields) VALUES
    ('01old0000000000000000000aa', 'blog', 1, 1.0, 'info', 'read', 'upload failed old', '{}'),
    ('01old0000000000000000000bb', 'docs', 1, 1.0, 'info', 'read', 'upload failed docs', '{}');
"""


def test_an_older_homes_logs_are_searchable_by_site_after_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as old:  # the log tables as the previous version made them
        old.executescript(_OLD_LOGS)
    for _ in range(2):  # the second open finds the upgrade done
        state = SqliteState(path)
        try:
            assert [line.message for line in state.search_logs("blog", "failed")] == [
                "upload failed old"]
        finally:
            state.close()
    state = SqliteState(path)
    try:
        state.put_site(Site("blog"))
        deployment = Deployment(new_id(), "blog", "main")
        state.create_deployment(deployment)
        state.append_logs([LogLine(deployment.id, 2.0, "info", "read", "upload failed new", {})])
        assert [line.message for line in state.search_logs("blog", "upload failed")] == [
            "upload failed new", "upload failed old"]
        state.delete_site("blog")  # the delete trigger takes the lines out of the index too
        assert state.search_logs("blog", "failed") == []
        assert [line.message for line in state.search_logs("docs", "failed")] == [
            "upload failed docs"]
    finally:
        state.close()
