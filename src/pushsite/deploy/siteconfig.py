"""The site's own configuration files, parsed at deploy time: `_headers`, `_redirects`,
`pushsite.toml`.

`_headers` and `_redirects` follow Netlify and Cloudflare Pages, so files users bring work
unchanged; rules.py documents how the parsed rules match. Anything malformed fails the deploy
with a `SiteConfigError` naming the file, the line and what was wrong: a rule is never dropped
silently. Parsed rules are plain dicts and lists (JSON), because they live in the manifest.

A redirect rule:  {"line": 4, "host": None, "path": "/news/*", "query": [["id", ":id"]],
                   "to": "/blog/:splat", "status": 301, "force": False}
                  (a query value ":name" captures, "" only requires the key, else must equal)
A header rule:    {"line": 1, "host": None, "path": "/*", "set": [["X-Frame-Options", "DENY"]],
                   "detach": ["x-powered-by"]}

GitHub Pages sites bring a `CNAME` file naming their custom domain: `parse_cname` reads it.

Limits (each a clear error): 2,000 rules and 512 Ki characters per file, 2,000 characters per
line; `pushsite.toml` up to 64 KiB with at most 1,000 entries in `exclude` and in `domains`.

Choices where the hosts differ or are silent:
- the default redirect status is 301 (Netlify; Cloudflare's is 302);
- Netlify's conditions (Country=, Language=, Role=, Cookie=) and proxying (a 200 to another
  site) are refused with a clear error rather than ignored;
- a `#` token after a redirect's fields starts a comment; in `_headers` only whole lines are
  comments, since header values may contain "#";
- a header path with no header lines under it is an error (it was surely meant to do something);
- headers the edge must own (Content-Length, Content-Encoding, Transfer-Encoding, ...) cannot be
  set or detached; header values must be printable ASCII.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pushsite.errors import ConfigError, SiteConfigError
from pushsite.names import check_branch_name, check_host
from pushsite.rules import (
    NAME,
    REDIRECT_STATUSES,
    PatternError,
    compile_host,
    compile_path,
)

MAX_RULES = 2_000  # per file, like Cloudflare's static redirects; more belongs in code
MAX_LINE = 2_000  # characters per line, like Cloudflare's _headers
MAX_FILE = 512 * 1024  # characters per _headers or _redirects file
MAX_TOML = 64 * 1024  # bytes of pushsite.toml
MAX_LIST = 1_000  # entries in exclude or domains

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
_VALUE = re.compile(r"^[\x20-\x7e\t]*$")
_RESERVED_HEADERS = frozenset({
    "connection", "content-encoding", "content-length", "content-range", "keep-alive",
    "te", "trailer", "transfer-encoding", "upgrade",
})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONDITION_KEYS = ("country", "language", "role", "cookie")
_STATUSES = ", ".join(str(s) for s in REDIRECT_STATUSES)


MAX_TIMEOUT = 3600.0  # seconds a build may run at most, whatever the site asks
DEFAULT_TIMEOUT = 600.0
BUILD_KEYS = ("cache", "command", "environment", "network", "publish", "timeout")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h)?$")


@dataclass(frozen=True)
class BuildSettings:
    """A site's build step: run `command` in the sandbox, then publish `publish`.

    `command` None means "detect the generator" (deploy/detect.py); `source` names the file
    the settings came from (pushsite.toml or netlify.toml), for the log.
    """

    command: str | None = None
    publish: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    cache: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    network: bool = False
    source: str = "pushsite.toml"


@dataclass(frozen=True)
class SiteSettings:
    """The settings a site keeps in its own `pushsite.toml`."""

    production_branch: str | None = None
    publish: str | None = None  # folder inside the bundle, normalised ("dist"); None = root
    build: BuildSettings | None = None  # the `[build]` table (or `build = "command"`)
    exclude: tuple[str, ...] = ()  # globs (fnmatch) of paths, relative to the publish folder
    domains: tuple[str, ...] = ()  # custom host names, lowercased
    tags: bool = False  # deploy tags as well as branches


# `site` names the site a folder is linked to (`pushsite link`, deploy/linked.py); the
# deployer has no use for it but must accept it
_SETTINGS = ("build", "domains", "exclude", "production_branch", "publish", "site", "tags")


def _lines(text: str, filename: str) -> list[tuple[int, str]]:
    """Numbered lines, checked against the size limits; CRLF and a leading BOM accepted."""
    if len(text) > MAX_FILE:
        raise SiteConfigError(
            f"{filename} is {len(text):,} characters; the limit is {MAX_FILE:,}: "
            "use fewer, broader rules (splats and placeholders)"
        )
    text = text.removeprefix("\ufeff")
    numbered = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if len(line) > MAX_LINE:
            raise SiteConfigError(
                f"{filename} line {number}: the line is {len(line):,} characters; "
                f"the limit is {MAX_LINE:,}"
            )
        control = _CONTROL.search(line)
        if control:
            raise SiteConfigError(
                f"{filename} line {number}: the line holds a control character "
                f"{control.group()!r}; remove it"
            )
        numbered.append((number, line))
    return numbered


def _count(rules: list[dict[str, Any]], filename: str, number: int) -> None:
    if len(rules) >= MAX_RULES:
        raise SiteConfigError(
            f"{filename} line {number}: more than {MAX_RULES:,} rules; "
            "combine them with splats (*) and placeholders (:name)"
        )


def _location(raw: str, where: str) -> tuple[str | None, str]:
    """Split a rule's path field into (host pattern or None, path pattern); raise ValueError."""
    if raw.startswith(("http://", "https://")):
        parts = urlsplit(raw)
        if re.search(r":\d*$", parts.netloc) or "@" in parts.netloc:
            raise ValueError(f'{where} "{raw}" may not name a port or user; write the host only')
        host = parts.netloc.lower().rstrip(".")
        if not host:
            raise ValueError(f'{where} "{raw}" has no host')
        if parts.query or parts.fragment:
            raise ValueError(f'{where} "{raw}" may not hold "?" or "#"')
        try:
            compile_host(host)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return host, parts.path or "/"
    if not raw.startswith("/"):
        raise ValueError(f'{where} "{raw}" must start with "/" or "https://"')
    return None, raw


def _check_names(host: str | None, path: str) -> set[str]:
    """Compile host and path patterns; return their placeholder names (plus "splat")."""
    try:
        compiled = compile_path(path, trailing_slash=False)
        names = set(compiled.names) | ({"splat"} if compiled.splat else set())
        if host:
            host_names = set(compile_host(host)[1])
            twice = host_names & names
            if twice:
                raise PatternError(f'placeholder ":{sorted(twice)[0]}" is in both host and path')
            names |= host_names
    except PatternError as exc:
        raise ValueError(str(exc)) from None
    return names


def parse_redirects(text: str, filename: str = "_redirects") -> list[dict[str, Any]]:
    """Parse a `_redirects` file: `from [key=value ...] to [status][!]` per line."""
    rules: list[dict[str, Any]] = []
    for number, line in _lines(text, filename):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        _count(rules, filename, number)
        try:
            rules.append(_redirect(fields, number))
        except ValueError as exc:
            raise SiteConfigError(f"{filename} line {number}: {exc}") from None
    return rules


def _redirect(fields: list[str], number: int) -> dict[str, Any]:
    source = fields[0]
    if "?" in source:
        raise ValueError(
            f'path "{source}" holds a query string; write conditions after the path, '
            'e.g. "/store id=:id /blog/:id 301"'
        )
    if "#" in source:
        raise ValueError(f'path "{source}" holds a "#" fragment, which browsers never send')
    host, path = _location(source, "path")
    names = _check_names(host, path)
    rest = fields[1:]
    query: list[list[str]] = []
    while rest and _is_condition(rest):
        token = rest.pop(0)
        key, equals, value = token.partition("=")
        _reject_condition(key)
        if equals and (not key or not value):
            raise ValueError(
                f'query condition "{token}" needs a key and a value, e.g. "id=:id"; '
                'a key alone requires only that the key is present'
            )
        if value.startswith(":") and NAME.fullmatch(value[1:]):
            if value[1:] in names:
                raise ValueError(f'placeholder "{value}" is used twice')
            names.add(value[1:])
        query.append([key, value])
    if not rest or rest[0].startswith("#"):
        raise ValueError(
            f'"{source}" has no target; write "from to [status]", e.g. "/old /new 301"'
        )
    target = rest.pop(0)
    _check_target(target, names)
    status, force = 301, False
    if rest and not rest[0].startswith("#") and "=" not in rest[0]:
        status, force = _status(rest.pop(0))
    if rest and not rest[0].startswith("#"):
        if "=" in rest[0]:
            _reject_condition(rest[0].partition("=")[0])
        raise ValueError(f'unexpected "{rest[0]}" after the target and status')
    if target.startswith(("http://", "https://")) and status in (200, 404):
        raise ValueError(
            f"a {status} rule serves a file of this site, but the target is another site "
            f'("{target}"); proxying is not supported, use a 301 or 302 redirect'
        )
    return {"line": number, "host": host, "path": path, "query": query, "to": target,
            "status": status, "force": force}


def _is_condition(rest: list[str]) -> bool:
    """Whether the next field is a query condition: "key=value", or a bare "key" (must be
    present, any value) when a target follows it."""
    token = rest[0]
    if token.startswith(("/", "http://", "https://", "#")):
        return False
    return "=" in token or (len(rest) > 1 and rest[1].startswith(("/", "http://", "https://")))


def _reject_condition(key: str) -> None:
    if key.lower() in _CONDITION_KEYS:
        raise ValueError(
            f'the condition "{key}=" (country, language, role or cookie) is not supported; '
            "remove it or handle that case in the page itself"
        )


def _check_target(target: str, names: set[str]) -> None:
    if target.startswith(("http://", "https://")):
        if not urlsplit(target).netloc:
            raise ValueError(f'target "{target}" has no host')
    elif not target.startswith("/"):
        raise ValueError(f'target "{target}" must start with "/" or "https://"')
    elif {".", ".."} & set(target.partition("?")[0].partition("#")[0].split("/")):
        raise ValueError(f'target "{target}" holds a "." or ".." segment; write the plain path')
    if ":splat" in target and "splat" not in names:
        raise ValueError(f'target "{target}" uses :splat but the path has no "*"')


def _status(token: str) -> tuple[int, bool]:
    force = token.endswith("!")
    digits = token.removesuffix("!")
    if not digits.isdigit() or int(digits) not in REDIRECT_STATUSES:
        raise ValueError(f'status "{digits}" is not one of {_STATUSES}')
    return int(digits), force


def parse_headers(text: str, filename: str = "_headers") -> list[dict[str, Any]]:
    """Parse a `_headers` file: a path line, then indented `Name: value` or `! Name` lines."""
    rules: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for number, line in _lines(text, filename):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] not in " \t":
            path_rule = _header_path(stripped, number, filename)
            _close(current, filename)
            _count(rules, filename, number)
            current = path_rule
            rules.append(current)
        elif current is None:
            raise SiteConfigError(
                f'{filename} line {number}: header line "{stripped}" comes before any path; '
                'start with a path such as "/*" on its own line'
            )
        else:
            _header_line(current, stripped, number, filename)
    _close(current, filename)
    return rules


def _header_path(text: str, number: int, filename: str) -> dict[str, Any]:
    where = f"{filename} line {number}"
    if not text.startswith(("/", "http://", "https://")):
        hint = " (indent header lines under their path)" if ":" in text else ""
        raise SiteConfigError(
            f'{where}: expected a path such as "/*" or an indented "Name: value" line, '
            f'found "{text}"{hint}'
        )
    if any(c.isspace() for c in text):
        raise SiteConfigError(
            f'{where}: path "{text}" holds a space; put each header on its own indented line'
        )
    try:
        if "?" in text or "#" in text:
            raise ValueError(f'path "{text}" may not hold "?" or "#"; headers match paths only')
        host, path = _location(text, "path")
        _check_names(host, path)
    except ValueError as exc:
        raise SiteConfigError(f"{where}: {exc}") from None
    return {"line": number, "host": host, "path": path, "set": [], "detach": []}


def _header_line(rule: dict[str, Any], text: str, number: int, filename: str) -> None:
    where = f"{filename} line {number}"
    if text.startswith("!"):
        name = text[1:].strip()
        _check_header_name(name, where)
        if name.lower() not in rule["detach"]:
            rule["detach"].append(name.lower())
        return
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon:
        raise SiteConfigError(
            f'{where}: expected "Name: value" or "! Name", found "{text}"'
        )
    _check_header_name(name, where)
    if not value:
        raise SiteConfigError(
            f'{where}: header "{name}" has no value; to remove a header write "! {name}"'
        )
    if not _VALUE.match(value):
        raise SiteConfigError(
            f'{where}: the value of "{name}" holds characters outside printable ASCII; '
            "percent-encode them"
        )
    rule["set"].append([name, value])


def _check_header_name(name: str, where: str) -> None:
    if not _TOKEN.match(name):
        raise SiteConfigError(
            f'{where}: "{name}" is not a valid header name (letters, digits and "-")'
        )
    if name.lower() in _RESERVED_HEADERS:
        raise SiteConfigError(
            f'{where}: the header "{name}" is set by the server and cannot be changed here'
        )


def _close(rule: dict[str, Any] | None, filename: str) -> None:
    if rule is not None and not rule["set"] and not rule["detach"]:
        raise SiteConfigError(
            f'{filename} line {rule["line"]}: path "{rule["path"]}" has no header lines under '
            'it; add indented "Name: value" lines or remove the path'
        )


def parse_pushsite_toml(data: bytes, filename: str = "pushsite.toml") -> SiteSettings:
    """Parse and check `pushsite.toml`; unknown keys are errors, so typos cannot hide."""
    if len(data) > MAX_TOML:
        raise SiteConfigError(f"{filename} is {len(data):,} bytes; the limit is {MAX_TOML:,}")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise SiteConfigError(f"{filename} is not valid UTF-8 text ({exc.reason})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column \d+\)|\(at end of document\)", message)
        where = f"{filename} line {found.group(1)}" if found and found.group(1) else filename
        what = message[: found.start()].strip() if found else message
        raise SiteConfigError(f"{where}: {what}; check the TOML syntax") from None
    return _settings(raw, text, filename)


def _settings(raw: dict[str, Any], text: str, filename: str) -> SiteSettings:
    def fail(key: str, what: str) -> SiteConfigError:
        line = _key_line(text, key)
        where = f"{filename} line {line}" if line else filename
        return SiteConfigError(f"{where}: {what}")

    for key in raw:
        if key not in _SETTINGS:
            raise fail(key, f'unknown setting "{key}"; known settings: {", ".join(_SETTINGS)}')

    def string(key: str) -> str | None:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise fail(key, f"{key} must be a string, found {value!r}")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(key, f"{key} must be a list of non-empty strings, found {value!r}")
        if len(value) > MAX_LIST:
            raise fail(key, f"{key} has {len(value):,} entries; the limit is {MAX_LIST:,}")
        return tuple(value)

    exclude = strings("exclude")
    for pattern in exclude:
        if pattern.startswith(("/", "./")):
            raise fail("exclude", f"exclude patterns are relative to the publish folder: write "
                                  f"{pattern.removeprefix('./').lstrip('/')!r}, not {pattern!r}")

    branch = string("production_branch")
    if branch is not None:
        try:
            check_branch_name(branch)
        except ConfigError as exc:
            raise fail("production_branch", f"production_branch: {exc}") from None
    publish = string("publish")
    if publish is not None:
        publish = _publish_folder(publish, fail)
    build = _build(raw.get("build"), fail, filename)
    if build is not None and build.publish is not None:
        if publish is not None and publish != build.publish:
            raise fail("publish", f"publish ({publish!r}) and [build] publish "
                                  f"({build.publish!r}) differ; keep one of them")
        publish = build.publish
    domains: list[str] = []
    for host in strings("domains"):
        try:
            checked = check_host(host)
        except ConfigError as exc:
            raise fail("domains", f"domains: {exc}") from None
        if checked not in domains:
            domains.append(checked)
    string("site")
    tags = raw.get("tags", False)
    if not isinstance(tags, bool):
        raise fail("tags", f"tags must be true or false, found {tags!r}")
    return SiteSettings(
        production_branch=branch,
        publish=publish,
        build=build,
        exclude=exclude,
        domains=tuple(domains),
        tags=tags,
    )


def _build(value: Any, fail: Any, filename: str) -> BuildSettings | None:
    """The `[build]` table; a plain string is the command alone (the older form)."""
    if value is None:
        return None
    if isinstance(value, str):
        return BuildSettings(command=_command(value, fail), source=filename)
    if not isinstance(value, dict):
        raise fail("build", f'build must be a table ([build] command = "...") or a command '
                            f"string, found {value!r}")
    for key in value:
        if key not in BUILD_KEYS:
            raise fail("build", f'unknown [build] setting "{key}"; known: '
                                f'{", ".join(BUILD_KEYS)}')
    command = value.get("command")
    if command is not None:
        if not isinstance(command, str):
            raise fail("build", f"[build] command must be a string, found {command!r}")
        command = _command(command, fail)
    publish = value.get("publish")
    if publish is not None:
        if not isinstance(publish, str):
            raise fail("build", f"[build] publish must be a string, found {publish!r}")
        publish = _publish_folder(publish, fail)
    environment = build_environment(value.get("environment", {}), fail)
    cache = value.get("cache", [])
    if not isinstance(cache, list) or not all(isinstance(c, str) and c for c in cache):
        raise fail("build", f"[build] cache must be a list of folders, found {cache!r}")
    folders = []
    for folder in cache:
        normal = _publish_folder(folder, fail)
        if normal is None:
            raise fail("build", "[build] cache may not name the whole tree (\".\")")
        folders.append(normal)
    network = value.get("network", False)
    if not isinstance(network, bool):
        raise fail("build", f"[build] network must be true or false, found {network!r}")
    timeout = parse_duration(value.get("timeout", DEFAULT_TIMEOUT), fail)
    return BuildSettings(command, publish, environment, tuple(folders), timeout, network,
                         filename)


def _command(value: str, fail: Any) -> str | None:
    if "\0" in value or len(value) > 4096:
        raise fail("build", "[build] command must be one line of at most 4,096 characters")
    return value.strip() or None


def build_environment(value: Any, fail: Any) -> tuple[tuple[str, str], ...]:
    """`environment = { NAME = "value" }`: names as a shell allows, values strings."""
    if not isinstance(value, dict):
        raise fail("build", f"[build] environment must be a table of strings, found {value!r}")
    pairs = []
    for name, item in value.items():
        if not _ENV_NAME.match(name):
            raise fail("build", f"[build] environment: {name!r} is not a variable name "
                                "(letters, digits, _)")
        if isinstance(item, bool | int | float):
            item = str(item).lower() if isinstance(item, bool) else str(item)
        if not isinstance(item, str) or "\0" in item:
            raise fail("build", f"[build] environment: {name} must be a string")
        pairs.append((name, item))
    if len(pairs) > 200:
        raise fail("build", "[build] environment holds more than 200 variables")
    return tuple(pairs)


def parse_duration(value: Any, fail: Any) -> float:
    """A timeout: seconds as a number, or "90s", "10m", "1h"; up to MAX_TIMEOUT."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        found = _DURATION.match(value.strip())
        if found:
            seconds = float(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[found.group(2) or "s"]
    if seconds is None or not 0 < seconds <= MAX_TIMEOUT:
        raise fail("build", f"[build] timeout must be a duration such as \"90s\", \"10m\" "
                            f"or \"1h\" (at most {MAX_TIMEOUT / 60:g}m), found {value!r}")
    return seconds


def parse_netlify_toml(data: bytes) -> BuildSettings | None:
    """netlify.toml's `[build]` (command, publish, environment), which people bring along;
    its other sections (redirects, headers, contexts, plugins) are Netlify's, not read."""
    filename = "netlify.toml"
    try:
        raw = tomllib.loads(data.decode("utf-8").removeprefix("\ufeff"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SiteConfigError(f"{filename}: {exc}; check the TOML syntax") from None
    table = raw.get("build")
    if table is None:
        return None

    def fail(key: str, what: str) -> SiteConfigError:
        return SiteConfigError(f"{filename}: {what}")

    if not isinstance(table, dict):
        raise fail("build", "[build] must be a table")
    known = {k: v for k, v in table.items() if k in ("command", "publish", "environment")}
    return _build(known, fail, filename)


def _publish_folder(value: str, fail: Any) -> str | None:
    """Normalise the publish folder ("./dist/" -> "dist"; "." -> None, the bundle root)."""
    if "\\" in value or value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise fail("publish", f'publish must be a relative folder such as "dist", found {value!r}')
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise fail("publish", f'publish may not leave the bundle with "..", found {value!r}')
    return "/".join(parts) or None


def _key_line(text: str, key: str) -> int | None:
    """The line a top-level key is written on (best effort: tomllib keeps no positions)."""
    pattern = re.compile(rf"""^\s*(?:\[\s*)?["']?{re.escape(key)}["']?\s*[=\].]""")
    for number, line in enumerate(text.split("\n"), start=1):
        if pattern.match(line):
            return number
    return None


def parse_cname(text: str, filename: str = "CNAME") -> str:
    """The custom domain a GitHub Pages `CNAME` file names (one host; blank lines allowed)."""
    hosts = [(number, line.strip()) for number, line in _lines(text, filename) if line.strip()]
    if len(hosts) != 1:
        raise SiteConfigError(
            f"{filename} names {len(hosts)} domains; write exactly one, e.g. www.example.com"
        )
    number, host = hosts[0]
    if "://" in host:
        host = urlsplit(host).hostname or host
    try:
        return check_host(host)
    except ConfigError as exc:
        raise SiteConfigError(f"{filename} line {number}: {exc}") from None
