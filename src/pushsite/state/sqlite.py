"""The embedded state store: one SQLite file in WAL mode, logs searchable with FTS5.

One connection guarded by a lock is enough here: every statement is short, and the deployer
batches its writes (log lines, status changes) so that a 40,000-file deploy makes a few dozen
transactions, not thousands.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pushsite.diskspace import Reserve, is_full, opened_with_room
from pushsite.errors import (
    BackendUnavailable,
    ConfigError,
    DeploymentNotFound,
    DiskFull,
    DomainConflict,
    SiteNotFound,
)
from pushsite.model import (
    ADMIN_SCOPE,
    PRODUCTION,
    Alias,
    Deployment,
    DomainStatus,
    LogLine,
    Site,
    SiteSettings,
    Status,
)
from pushsite.sqlite_setup import setting_up, write_transaction
from pushsite.state import DELIVERIES_KEPT, DELIVERY_RETENTION, SiteHeads, Sweep, site_page

if TYPE_CHECKING:  # records a deploy never builds (records.py): imported where built
    from pushsite.records import Delivery, Domain, NotifyEndpoint, Token

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    name TEXT PRIMARY KEY, production_branch TEXT NOT NULL, created REAL NOT NULL,
    webhook_secret TEXT NOT NULL DEFAULT '', settings TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS domains (
    host TEXT PRIMARY KEY, site TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    scope TEXT NOT NULL DEFAULT '', claimed REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY, site TEXT NOT NULL, branch TEXT NOT NULL, status TEXT NOT NULL,
    "commit" TEXT NOT NULL, message TEXT NOT NULL, source TEXT NOT NULL,
    bundle_key TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    files INTEGER NOT NULL, bytes_in INTEGER NOT NULL, bytes_stored INTEGER NOT NULL,
    blobs_new INTEGER NOT NULL, blobs_reused INTEGER NOT NULL, error TEXT NOT NULL,
    progress TEXT NOT NULL, error_kind TEXT NOT NULL DEFAULT '',
    runner TEXT NOT NULL DEFAULT '', lease_until REAL NOT NULL DEFAULT 0,
    draft INTEGER NOT NULL DEFAULT 0, carried INTEGER NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '', mirror TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS deployments_site ON deployments (site, id);
CREATE TABLE IF NOT EXISTS aliases (
    site TEXT NOT NULL, name TEXT NOT NULL, deployment_id TEXT NOT NULL,
    moved_by TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (site, name));
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY, deployment_id TEXT NOT NULL, site TEXT NOT NULL,
    seq INTEGER NOT NULL, time REAL NOT NULL, level TEXT NOT NULL, stage TEXT NOT NULL,
    message TEXT NOT NULL, fields TEXT NOT NULL,
    site_key TEXT GENERATED ALWAYS AS ('s' || hex(site)) VIRTUAL, UNIQUE (deployment_id, seq));
{log_search}CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, site TEXT,
    scopes TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY, site TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    n INTEGER PRIMARY KEY, endpoint_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS deliveries_endpoint ON deliveries (endpoint_id, n);
CREATE TABLE IF NOT EXISTS sweeps (id TEXT PRIMARY KEY, data TEXT NOT NULL);
"""

# Log search (issue 20): the site is an FTS5 column too, as one token (`site_key`: "s" and the
# name's UTF-8 in hex, so "my-blog" is never a phrase that "my-blog-2" also holds), so a
# search is one FTS5 query, `site_key : <site> AND <words>`: FTS5 intersects the site's and
# the words' posting lists and walks rowids newest first, and LIMIT stops it after a page. It
# used to join every hit of the words in any site to `logs` and sort them all: 2.0 s at p95
# for a word in a third of 2,000,000 lines. `site_key` is a generated column of `logs`, so
# the external-content table can still read (and rebuild from) its own columns.
_LOG_SEARCH = (
    """CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5(
    message, stage, site_key, content='logs', content_rowid='id')""",
    """CREATE TRIGGER IF NOT EXISTS logs_ai AFTER INSERT ON logs BEGIN
    INSERT INTO logs_fts(rowid, message, stage, site_key)
    VALUES (new.id, new.message, new.stage, new.site_key);
END""",
    """CREATE TRIGGER IF NOT EXISTS logs_ad AFTER DELETE ON logs BEGIN
    INSERT INTO logs_fts(logs_fts, rowid, message, stage, site_key)
    VALUES ('delete', old.id, old.message, old.stage, old.site_key);
END""")
_SCHEMA = _SCHEMA.replace("{log_search}", "".join(f"{sql};\n" for sql in _LOG_SEARCH))

_RESERVE_BYTES = 1 << 20  # diskspace.py: a cancel's commit took 36 KiB on a full disk
_DEPLOYMENT_COLUMNS = [f.name for f in fields(Deployment)]
_QUOTED_COLUMNS = ", ".join(f'"{c}"' for c in _DEPLOYMENT_COLUMNS)
_D_COLUMNS = ", ".join(f'd."{c}"' for c in _DEPLOYMENT_COLUMNS)
_PROGRESS_COLUMNS = ("files", "carried", "bytes_in", "bytes_stored", "blobs_new",
                     "blobs_reused", "progress", "stage")


# columns added since a table was first created: (table, column, declaration)
_ADDED_COLUMNS = [("deployments", "error_kind", "TEXT NOT NULL DEFAULT ''"),
                  ("deployments", "runner", "TEXT NOT NULL DEFAULT ''"),
                  ("deployments", "lease_until", "REAL NOT NULL DEFAULT 0"),
                  ("deployments", "draft", "INTEGER NOT NULL DEFAULT 0"),
                  ("deployments", "carried", "INTEGER NOT NULL DEFAULT 0"),
                  ("deployments", "stage", "TEXT NOT NULL DEFAULT ''"),
                  ("deployments", "mirror", "TEXT NOT NULL DEFAULT ''"),
                  # claims made before approvals existed were served: they stay approved
                  ("domains", "status", "TEXT NOT NULL DEFAULT 'approved'"),
                  ("domains", "scope", "TEXT NOT NULL DEFAULT ''"),
                  ("domains", "claimed", "REAL NOT NULL DEFAULT 0")]


_DOMAIN_COLUMNS = "host, site, status, scope, claimed"


def _domain(row: sqlite3.Row) -> Domain:
    from pushsite.records import Domain

    return Domain(row[0], row[1], DomainStatus(row[2]), row[3], row[4])


def _site_key(site: str) -> str:
    """The one FTS5 token that names a site in logs_fts (the generated column's value)."""
    return "s" + site.encode().hex().upper()


def _index_logs_by_site(db: sqlite3.Connection) -> None:
    """Bring an older home's log search up to the site-keyed one (_LOG_SEARCH): add the
    generated column, drop the old index and its triggers, make and fill the new one. Run
    under the setup lock; 2,000,000 lines took about 20 s."""
    if any(row[1] == "site_key" for row in db.execute("PRAGMA table_xinfo(logs)")):
        return
    with write_transaction(db):
        db.execute("ALTER TABLE logs ADD COLUMN site_key TEXT "
                   "GENERATED ALWAYS AS ('s' || hex(site)) VIRTUAL")
        for trigger in ("logs_ai", "logs_ad"):
            db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        db.execute("DROP TABLE IF EXISTS logs_fts")
        for sql in _LOG_SEARCH:
            db.execute(sql)
        db.execute("INSERT INTO logs_fts(logs_fts) VALUES ('rebuild')")


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a database made by an older version up to the schema (ALTER TABLE ADD COLUMN)."""
    for table, column, declaration in _ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f'ALTER TABLE {table} ADD COLUMN "{column}" {declaration}')


class SqliteState:
    """A StateStore in one SQLite file."""

    def __init__(self, path: Path) -> None:
        # room for the writes that settle things on a full disk (diskspace.py)
        self._reserve = Reserve(path.with_name(path.name + "-reserve"), _RESERVE_BYTES)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = opened_with_room(self._reserve, path, lambda: self._open(path))
        except (OSError, sqlite3.Error) as exc:
            if is_full(exc, path):
                raise DiskFull.holding(path) from exc
            raise BackendUnavailable(f"cannot open the state database {path}: {exc}") from exc
        self._reserve.restore()
        self.path = path
        self._lock = threading.RLock()
        self._own_writes = 0

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        with setting_up(path):
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                _add_missing_columns(db)
                _index_logs_by_site(db)
                # a page of sites finds its domains in one query (list_sites)
                db.execute("CREATE INDEX IF NOT EXISTS domains_site ON domains (site, host)")
                # recovery lists running and queued deployments (an old table gains it too)
                db.execute("CREATE INDEX IF NOT EXISTS deployments_status "
                           "ON deployments (status, id)")
            except BaseException:
                db.close()
                raise
        return db

    @classmethod
    def from_url(cls, url: str) -> SqliteState:
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or not parts.path:
            raise ConfigError(f"invalid state URL {url!r}: expected sqlite:///absolute/path.db")
        return cls(Path(unquote(parts.path)))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with self._reserve.room(), write_transaction(self._db) as db:
                    yield db
                self._own_writes += 1
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> BackendUnavailable:
        if is_full(exc, self.path):
            return DiskFull.holding(self.path)
        return BackendUnavailable(f"state database error: {exc}")

    def _query(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def version(self) -> tuple[int, int]:
        """Changes whenever any process commits a change: lets readers cache safely.

        SQLite's data_version moves on commits made by other connections; our own commits
        are counted here. The edge uses it to keep alias lookups until something changed.
        """
        with self._lock:
            row = self._db.execute("PRAGMA data_version").fetchone()
            return int(row[0]), self._own_writes

    _SHM_HEADER = 96
    _shm_fd: int | None = None

    def change_token(self) -> bytes | None:
        """Bytes that stay the same while nobody commits; None when there is nothing to watch
        (then ask `version()`). A cheap first check before `version()`, for the edge.

        `version()` costs a statement (about 4 us, a good part of a cached edge request).
        Every commit in WAL mode, by any process, rewrites the header of the WAL index, the
        first 96 bytes of the "-shm" file beside the database (two copies of: change counter,
        last frame, checksums, salts), which is how SQLite's own readers notice commits. One
        pread of it (under 1 us) that returns the same bytes as before proves no commit
        happened in between; different bytes (a commit, or a checkpoint) say: ask again.
        """
        fd = self._shm_fd
        if fd is None:
            with self._lock:
                if self._shm_fd is None:
                    try:
                        self._shm_fd = os.open(f"{self.path}-shm", os.O_RDONLY)
                    except OSError:
                        return None
                fd = self._shm_fd
        try:
            header = os.pread(fd, self._SHM_HEADER, 0)
        except OSError:
            return None
        return header if len(header) == self._SHM_HEADER else None

    # sites ---------------------------------------------------------------------------------
    def put_site(self, site: Site) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO sites VALUES (?, ?, ?, ?, ?)",
                (site.name, site.production_branch, site.created, site.webhook_secret,
                 json.dumps(site.settings.to_dict())),
            )

    def get_site(self, name: str) -> Site:
        rows = self._query("SELECT * FROM sites WHERE name = ?", (name,))
        if not rows:
            raise SiteNotFound(f"no site named {name!r}; `pushsite sites` lists them")
        return self._sites(rows)[0]

    def list_sites(self, *, after: str | None = None, limit: int) -> list[Site]:
        """A page by name, with the page's domains in one more query (it was one query per
        site, every site: 1.5 s at p95 for 10,000)."""
        rows = self._query("SELECT * FROM sites WHERE name > ? ORDER BY name LIMIT ?",
                           (after or "", site_page(limit)))
        return self._sites(rows)

    def _sites(self, rows: list[sqlite3.Row]) -> list[Site]:
        domains: dict[str, list[str]] = {row[0]: [] for row in rows}
        if rows:
            for host, site in self._query(
                    "SELECT host, site FROM domains WHERE site IN "
                    "(SELECT value FROM json_each(?)) ORDER BY site, host",
                    (json.dumps(list(domains)),)):
                domains[site].append(host)
        return [Site(row[0], row[1], row[2], domains[row[0]], row[3],
                     SiteSettings.from_dict(json.loads(row[4]))) for row in rows]

    def site_heads(self, sites: Sequence[str]) -> dict[str, SiteHeads]:
        """One statement for the page: each site's newest deployment is a seek on the
        (site, id) index, its live one the production alias joined to its deployment (was
        one list_deployments per site, every site: 4.5 s for 10,000)."""
        rows = self._query(
            "WITH names(site) AS (SELECT DISTINCT value FROM json_each(?1)) "
            f"SELECT n.site, 'newest', {_D_COLUMNS} FROM names n JOIN deployments d "
            "ON d.id = (SELECT max(id) FROM deployments WHERE site = n.site) "
            f"UNION ALL SELECT a.site, 'live', {_D_COLUMNS} FROM names n JOIN aliases a "
            "ON a.site = n.site AND a.name = ?2 JOIN deployments d ON d.id = a.deployment_id",
            (json.dumps(list(sites)), PRODUCTION))
        heads: dict[str, SiteHeads] = {}
        for row in rows:
            setattr(heads.setdefault(row[0], SiteHeads()), row[1], self._deployment(row[2:]))
        return heads

    def delete_site(self, name: str) -> None:
        with self._tx() as db:
            for table, column in (("sites", "name"), ("domains", "site"), ("aliases", "site"),
                                  ("deployments", "site"), ("logs", "site")):
                if table == "sites":  # the endpoints' delivery logs, then the endpoints
                    db.execute("DELETE FROM deliveries WHERE endpoint_id IN "
                               "(SELECT id FROM endpoints WHERE site = ?)", (name,))
                    db.execute("DELETE FROM endpoints WHERE site = ?", (name,))
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))

    # domains -------------------------------------------------------------------------------
    def claim_domain(self, host: str, site: str, *,
                     status: DomainStatus = DomainStatus.PENDING,
                     scope: str = ADMIN_SCOPE) -> Domain:
        with self._tx() as db:
            row = db.execute("SELECT site FROM domains WHERE host = ?", (host,)).fetchone()
            if row is not None and row[0] != site:
                raise DomainConflict(
                    f"the domain {host} is already claimed by site {row[0]!r}; "
                    f"remove it there first with `pushsite domains remove {row[0]} {host}`"
                )
            if row is None:
                db.execute("INSERT INTO domains (host, site, status, scope, claimed) "
                           "VALUES (?, ?, ?, ?, ?)", (host, site, str(status), scope, time.time()))
            elif status is DomainStatus.APPROVED:
                db.execute("UPDATE domains SET status = ?, scope = ? WHERE host = ? AND "
                           "status != ?", (str(status), scope, host, str(status)))
        claim = self.get_domain(host)
        assert claim is not None
        return claim

    def approve_domain(self, host: str, site: str) -> bool:
        with self._tx() as db:
            done = db.execute("UPDATE domains SET status = ? WHERE host = ? AND site = ?",
                              (str(DomainStatus.APPROVED), host, site))
            return done.rowcount > 0

    def get_domain(self, host: str) -> Domain | None:
        rows = self._query(f"SELECT {_DOMAIN_COLUMNS} FROM domains WHERE host = ?", (host,))
        return _domain(rows[0]) if rows else None

    def list_domains(self, site: str) -> list[Domain]:
        rows = self._query(f"SELECT {_DOMAIN_COLUMNS} FROM domains WHERE site = ? ORDER BY host",
                           (site,))
        return [_domain(row) for row in rows]

    def release_domain(self, host: str, site: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM domains WHERE host = ? AND site = ?", (host, site))

    def domain_site(self, host: str) -> str | None:
        rows = self._query("SELECT site FROM domains WHERE host = ?", (host,))
        return rows[0][0] if rows else None

    # deployments ---------------------------------------------------------------------------
    def create_deployment(self, deployment: Deployment) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO deployments ({_QUOTED_COLUMNS}) VALUES "
                f"({','.join('?' * len(_DEPLOYMENT_COLUMNS))})",
                self._deployment_row(deployment),
            )

    def get_deployment(self, deployment_id: str) -> Deployment:
        rows = self._query(
            f"SELECT {_QUOTED_COLUMNS} FROM deployments WHERE id = ?", (deployment_id,))
        if not rows:
            raise DeploymentNotFound(f"no deployment with id {deployment_id!r}")
        return self._deployment(rows[0])

    def update_deployment(
        self, deployment: Deployment, expect_status: Status | None = None,
        *, expect_runner: str | None = None,
    ) -> bool:
        assignments = ", ".join(f'"{c}" = ?' for c in _DEPLOYMENT_COLUMNS[1:])
        sql = f"UPDATE deployments SET {assignments} WHERE id = ?"
        args = [*self._deployment_row(deployment)[1:], deployment.id]
        if expect_status is not None:
            sql += " AND status = ?"
            args.append(str(expect_status))
        if expect_runner is not None:
            sql += " AND runner = ?"
            args.append(expect_runner)
        with self._tx() as db:
            return db.execute(sql, args).rowcount == 1

    def claim_lease(self, deployment_id: str, runner: str, until: float, *, holder: str,
                    held_until: float | None = None) -> bool:
        sql = ("UPDATE deployments SET runner = ?, lease_until = ? "
               "WHERE id = ? AND status = ? AND runner = ?")
        args: list[Any] = [runner, until, deployment_id, str(Status.RUNNING), holder]
        if held_until is not None:
            sql += " AND lease_until = ?"
            args.append(held_until)
        with self._tx() as db:
            return db.execute(sql, args).rowcount == 1

    def record_progress(self, deployment: Deployment) -> bool:
        columns = ", ".join(f"{c} = ?" for c in _PROGRESS_COLUMNS)
        args = [getattr(deployment, c) for c in _PROGRESS_COLUMNS]
        with self._tx() as db:
            return db.execute(
                f"UPDATE deployments SET {columns} WHERE id = ? AND status = ? AND runner = ?",
                [*args, deployment.id, str(Status.RUNNING), deployment.runner]).rowcount == 1

    def list_deployments(
        self,
        site: str | None = None,
        *,
        branch: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Deployment]:
        where, args = [], []
        for column, value in (("site", site), ("branch", branch), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(str(value))
        if before:
            where.append("id < ?")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"SELECT {_QUOTED_COLUMNS} FROM deployments {clause} ORDER BY id DESC LIMIT ?",
            [*args, limit],
        )
        return [self._deployment(row) for row in rows]

    def find_deployments(self, prefix: str, *, site: str | None = None,
                         limit: int = 10) -> list[Deployment]:
        # a range on the primary key (or on the (site, id) index): ids are ASCII, so every id
        # that starts with `prefix` sorts between it and prefix + U+FFFF
        where, args = "id >= ? AND id < ?", [prefix, prefix + "\uffff"]
        if site is not None:
            where, args = f"site = ? AND {where}", [site, *args]
        rows = self._query(f"SELECT {_QUOTED_COLUMNS} FROM deployments WHERE {where} "
                           "ORDER BY id DESC LIMIT ?", [*args, limit])
        return [self._deployment(row) for row in rows]

    @staticmethod
    def _deployment_row(deployment: Deployment) -> list[Any]:
        row = [getattr(deployment, c) for c in _DEPLOYMENT_COLUMNS]
        row[_DEPLOYMENT_COLUMNS.index("status")] = str(deployment.status)
        return row

    @staticmethod
    def _deployment(row: sqlite3.Row | tuple[Any, ...]) -> Deployment:
        return Deployment.from_dict(dict(zip(_DEPLOYMENT_COLUMNS, row, strict=True)))

    # aliases -------------------------------------------------------------------------------
    def get_alias(self, site: str, name: str) -> Alias | None:
        rows = self._query("SELECT * FROM aliases WHERE site = ? AND name = ?", (site, name))
        return Alias(*rows[0]) if rows else None

    def list_aliases(self, site: str) -> list[Alias]:
        return [Alias(*row) for row in self._query(
            "SELECT * FROM aliases WHERE site = ? ORDER BY name", (site,))]

    def move_alias(self, site: str, name: str, deployment_id: str, moved_by: str) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO aliases VALUES (?, ?, ?, ?, ?) ON CONFLICT (site, name) DO UPDATE "
                "SET deployment_id = excluded.deployment_id, moved_by = excluded.moved_by, "
                "updated = excluded.updated WHERE aliases.moved_by < excluded.moved_by",
                (site, name, deployment_id, moved_by, time.time()),
            )
            return cursor.rowcount == 1

    def delete_alias(self, site: str, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM aliases WHERE site = ? AND name = ?", (site, name))

    # logs ----------------------------------------------------------------------------------
    def append_logs(self, lines: list[LogLine]) -> None:
        if not lines:
            return
        with self._tx() as db:
            next_seq: dict[str, int] = {}
            for line in lines:
                if line.deployment_id not in next_seq:
                    row = db.execute(
                        "SELECT COALESCE(MAX(seq), 0) FROM logs WHERE deployment_id = ?",
                        (line.deployment_id,),
                    ).fetchone()
                    next_seq[line.deployment_id] = row[0]
                next_seq[line.deployment_id] += 1
                line.seq = next_seq[line.deployment_id]
            db.executemany(
                "INSERT INTO logs (deployment_id, site, seq, time, level, stage, message, fields)"
                " SELECT ?, COALESCE((SELECT site FROM deployments WHERE id = ?), ''),"
                " ?, ?, ?, ?, ?, ?",
                [(ln.deployment_id, ln.deployment_id, ln.seq, ln.time, ln.level, ln.stage,
                  ln.message, json.dumps(ln.fields, default=str)) for ln in lines],
            )

    def get_logs(self, deployment_id: str, after: int = 0, limit: int = 10_000) -> list[LogLine]:
        rows = self._query(
            "SELECT deployment_id, time, level, stage, message, fields, seq FROM logs "
            "WHERE deployment_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (deployment_id, after, limit),
        )
        return [self._line(row) for row in rows]

    def search_logs(self, site: str, query: str, limit: int = 100) -> list[LogLine]:
        terms = " ".join('"' + word.replace('"', '""') + '"' for word in query.split())
        if not terms:
            return []
        # the FTS table drives (CROSS JOIN keeps it the outer loop) and its rowid order is
        # the result's, so FTS5 walks hits newest first and stops at the page: no sort
        rows = self._query(
            "SELECT l.deployment_id, l.time, l.level, l.stage, l.message, l.fields, l.seq "
            "FROM logs_fts f CROSS JOIN logs l ON l.id = f.rowid "
            "WHERE logs_fts MATCH ? AND l.site = ? ORDER BY f.rowid DESC LIMIT ?",
            (f'site_key : "{_site_key(site)}" AND {{message stage}} : ({terms})', site, limit),
        )
        return [self._line(row) for row in rows]

    @staticmethod
    def _line(row: sqlite3.Row) -> LogLine:
        return LogLine(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])

    # tokens --------------------------------------------------------------------------------
    def put_token(self, token: Token) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?, ?, ?)",
                (token.id, token.name, token.hash, token.site, json.dumps(token.scopes),
                 token.created),
            )

    def find_token(self, token_hash: str) -> Token | None:
        rows = self._query("SELECT * FROM tokens WHERE hash = ?", (token_hash,))
        return self._token(rows[0]) if rows else None

    def list_tokens(self) -> list[Token]:
        return [self._token(r) for r in self._query("SELECT * FROM tokens ORDER BY created")]

    @staticmethod
    def _token(row: sqlite3.Row) -> Token:
        from pushsite.records import Token

        return Token(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5])

    def delete_token(self, token_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM tokens WHERE id = ?", (token_id,))

    # notification endpoints ------------------------------------------------------------------
    def put_endpoint(self, endpoint: NotifyEndpoint) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO endpoints VALUES (?, ?, ?)",
                       (endpoint.id, endpoint.site, json.dumps(endpoint.to_dict(secret=True))))

    def update_endpoint(self, endpoint: NotifyEndpoint) -> bool:
        with self._tx() as db:
            return db.execute("UPDATE endpoints SET data = ? WHERE id = ? AND site = ?",
                              (json.dumps(endpoint.to_dict(secret=True)), endpoint.id,
                               endpoint.site)).rowcount == 1

    def list_endpoints(self, site: str) -> list[NotifyEndpoint]:
        rows = self._query("SELECT data FROM endpoints WHERE site = ?", (site,))
        if not rows:
            return []  # most sites: a deploy's announcement loads no records.py
        from pushsite.records import NotifyEndpoint

        found = [NotifyEndpoint.from_dict(json.loads(row[0])) for row in rows]
        return sorted(found, key=lambda e: (e.created, e.id))

    def delete_endpoint(self, site: str, endpoint_id: str) -> bool:
        with self._tx() as db:
            gone = db.execute("DELETE FROM endpoints WHERE id = ? AND site = ?",
                              (endpoint_id, site)).rowcount == 1
            if gone:
                db.execute("DELETE FROM deliveries WHERE endpoint_id = ?", (endpoint_id,))
            return gone

    def append_delivery(self, delivery: Delivery) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO deliveries (endpoint_id, data) VALUES (?, ?)",
                       (delivery.endpoint_id, json.dumps(delivery.to_dict())))
            self._trim_deliveries(db, delivery.endpoint_id, time.time() - DELIVERY_RETENTION,
                                  DELIVERIES_KEPT)

    @staticmethod
    def _trim_deliveries(db: sqlite3.Connection, endpoint_id: str, before: float,
                         keep: int) -> int:
        """One endpoint's records past `before` or behind its newest `keep` (at most a few
        hundred rows, found through the (endpoint_id, n) index)."""
        return db.execute(
            "DELETE FROM deliveries WHERE endpoint_id = ?1 AND (json_extract(data, '$.time') < ?2"
            " OR n < (SELECT n FROM deliveries WHERE endpoint_id = ?1 ORDER BY n DESC"
            " LIMIT 1 OFFSET ?3))", (endpoint_id, before, max(keep, 1) - 1)).rowcount

    def list_deliveries(self, endpoint_id: str, limit: int = 50) -> list[Delivery]:
        rows = self._query("SELECT data FROM deliveries WHERE endpoint_id = ? "
                           "AND json_extract(data, '$.time') >= ? ORDER BY n DESC LIMIT ?",
                           (endpoint_id, time.time() - DELIVERY_RETENTION, limit))
        from pushsite.records import Delivery

        return [Delivery.from_dict(json.loads(row[0])) for row in rows]

    def prune_deliveries(self, endpoint_id: str, before: float, keep: int) -> int:
        with self._tx() as db:
            return self._trim_deliveries(db, endpoint_id, before, keep)

    # dedup ---------------------------------------------------------------------------------
    def remember(self, key: str) -> bool:
        with self._tx() as db:
            cursor = db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (key, time.time()))
            return cursor.rowcount == 1

    def forget(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM seen WHERE key = ?", (key,))

    def recalls(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM seen WHERE key = ?", (key,)).fetchone()
        return row is not None

    # prune's sweeps ------------------------------------------------------------------------
    def put_sweep(self, sweep: Sweep) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO sweeps VALUES (?, ?)",
                       (sweep.id, json.dumps(sweep.to_dict())))

    def list_sweeps(self) -> list[Sweep]:
        rows = self._query("SELECT data FROM sweeps ORDER BY id")
        return [Sweep.from_dict(json.loads(row[0])) for row in rows]

    def delete_sweep(self, sweep_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sweeps WHERE id = ?", (sweep_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._shm_fd is not None:
                os.close(self._shm_fd)
                self._shm_fd = None
