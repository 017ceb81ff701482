"""Request-time matching of a deployment's `_headers` and `_redirects` rules.

siteconfig.py parses the files at deploy time into plain dicts stored in the manifest; the edge
builds one `CompiledRules` per manifest and asks it, per request, for a redirect and for headers.
Nothing is compiled until first asked, and each list is indexed once: rules whose path has no
splat or placeholder sit in a dict keyed by path, so a file of 2,000 plain redirects costs one
dict lookup plus a regex test for each pattern rule.

Patterns (both files):
- a path starting with "/"; `*` (at most one) is the splat and matches any characters,
  slashes included; a path ending in "/*" also matches the folder itself ("/news/*" matches
  "/news"); a segment written `:name` is a placeholder matching one segment (not "/");
  anything else is literal and compared after percent-decoding;
- or an absolute URL ("https://:sub.example.com/*"): the host is lowercased and each label is
  literal or a `:name` placeholder; such a rule matches only when the caller passes `host`
  (the scheme is not compared: the edge cannot always know it).

Redirect rules (first match wins):
- a path matches with or without one trailing slash ("/about" matches "/about/"), as on
  Netlify; header patterns match the path exactly;
- `query` conditions are `[key, value]` pairs: every key must be in the request's query string;
  a value `:name` captures the request's value, "" accepts any value, any other value must
  be equal (the first occurrence of a repeated key counts);
- when a file exists at the path, only forced rules (`!`) apply (shadowing);
- `:splat` and `:name` in the target are replaced with the captured values, percent-encoded;
  references to names the rule does not capture stay as written;
- a 3xx rule whose target is the request itself (same path and query) is skipped, so
  "/about/ /about" cannot loop.

Query string of the original request (Netlify's behaviour): it is appended to the target when
the target has no "?" of its own and the rule has no query conditions. A target with its own
query string replaces the original; a rule with query conditions consumes the query (write the
values into the target, e.g. "/store id=:id /blog/:id" or "/s q=:q /search?q=:q").

The target in a `RedirectResult` is percent-encoded (fit for a Location header). For 200 and
404 rewrites the edge should percent-decode its path part before looking the file up.

Header rules: every matching rule applies, top to bottom. A repeated header name (any case)
is joined with ", " at the place it first appeared. `! Name` (detach) removes the header
added by earlier matching rules and asks the edge to drop its own default of that name; a
later rule may set it again, and a name that ends up set is never in the detach set. `:name`
and `:splat` in header values are replaced with the captured values, percent-encoded, so a
path can never inject a line break into a header.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from pushsite.caches import BoundedCache

REDIRECT_STATUSES = (200, 301, 302, 303, 307, 308, 404)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
_HOST_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Characters left as they are when a captured value is written into a target or header value:
# the unreserved set plus sub-delimiters that are valid in a path; "/" only for the splat.
_SAFE = "!$&'()*+,;=:@-._~"
_HEADER_CACHE_SIZE = 4096
_UNSAFE_QUERY = re.compile(r"[^\x21-\x7e]")


class PatternError(ValueError):
    """A path or host pattern that cannot be compiled; siteconfig adds the file and line."""


@dataclass(frozen=True)
class RedirectResult:
    """What the edge does with a request: redirect (3xx), rewrite (200) or serve a 404 page."""

    status: int
    target: str  # a path starting with "/" (query string included if any) or an absolute URL
    force: bool


@dataclass(frozen=True)
class _Pattern:
    """A compiled path pattern: a literal key for the dict index, or a regex."""

    literal: str | None  # decoded, normalised path when the pattern has no splat/placeholder
    regex: re.Pattern[str] | None
    prefix: str  # decoded text every matching path starts with (a cheap pre-filter)
    names: tuple[str, ...]  # placeholder names, in order
    splat: bool


def normalise(path: str) -> str:
    """The key a redirect path is compared under: one trailing slash dropped, except for "/"."""
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def compile_path(pattern: str, *, trailing_slash: bool) -> _Pattern:
    """Compile a path pattern; `trailing_slash=True` lets it match with or without one."""
    if not pattern.startswith("/"):
        raise PatternError(f'path "{pattern}" must start with "/"')
    if pattern.count("*") > 1:
        raise PatternError(f'path "{pattern}" has more than one "*"; use at most one splat')
    folder_splat = pattern.endswith("/*")
    body = pattern[:-2] if folder_splat else pattern
    if trailing_slash:
        body = normalise(body)
    segments = body.split("/")[1:] if body not in ("", "/") else []
    if body == "/" and not trailing_slash:
        segments = [""]
    parts: list[str] = []
    names: list[str] = []
    prefix: list[str] = []
    special = False
    for segment in segments:
        if segment.startswith(":") and NAME.fullmatch(segment[1:]):
            name = segment[1:]
            if name == "splat":
                raise PatternError('":splat" is reserved for the "*" match; use another name')
            if name in names:
                raise PatternError(f'placeholder ":{name}" appears twice in "{pattern}"')
            names.append(name)
            parts.append(f"/(?P<p_{name}>[^/]+)")
            if not special:
                prefix.append("/")
            special = True
        elif "*" in segment:
            before, _, after = segment.partition("*")
            parts.append(f"/{re.escape(unquote(before))}(?P<splat>.*){re.escape(unquote(after))}")
            if not special:
                prefix.append("/" + unquote(before))
            special = True
        else:
            parts.append("/" + re.escape(unquote(segment)))
            if not special:
                prefix.append("/" + unquote(segment))
    if folder_splat:
        parts.append("(?:/(?P<splat>.*))?")
    elif trailing_slash:
        parts.append("/?")
    splat = folder_splat or "*" in pattern
    if not names and not splat:
        literal = unquote(body) or "/"
        return _Pattern(normalise(literal) if trailing_slash else literal, None, literal,
                        (), False)
    return _Pattern(None, re.compile("".join(parts), re.DOTALL), "".join(prefix), tuple(names),
                    splat)


def compile_host(pattern: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """Compile a host pattern such as ":project.pages.dev" (labels literal or `:name`)."""
    labels = pattern.lower().split(".")
    if len(labels) < 2:
        raise PatternError(f'host "{pattern}" is not a domain such as www.example.com')
    parts: list[str] = []
    names: list[str] = []
    for label in labels:
        if label.startswith(":") and NAME.fullmatch(label[1:]):
            if label[1:] in names or label[1:] == "splat":
                raise PatternError(f'placeholder "{label}" cannot be used twice or as :splat')
            names.append(label[1:])
            parts.append(f"(?P<p_{label[1:]}>[^.]+)")
        elif _HOST_LABEL.match(label):
            parts.append(re.escape(label))
        else:
            raise PatternError(f'host "{pattern}" has an invalid label "{label}"')
    return re.compile(r"\.".join(parts)), tuple(names)


def _encode(value: str, *, slash: bool) -> str:
    return quote(value, safe=_SAFE + ("/" if slash else ""))


def substitute(template: str, captures: dict[str, str]) -> str:
    """Replace `:name` references whose name was captured; leave every other colon alone."""
    if not captures or ":" not in template:
        return template

    def one(match: re.Match[str]) -> str:
        return captures.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, template)


class _Rule:
    """One rule's matcher: path pattern, optional host pattern, optional query conditions."""

    __slots__ = ("host", "host_names", "index", "path", "query")

    def __init__(self, index: int, rule: dict[str, Any], trailing_slash: bool) -> None:
        self.index = index
        self.path = compile_path(rule["path"], trailing_slash=trailing_slash)
        host = rule.get("host")
        self.host: re.Pattern[str] | None = None
        self.host_names: tuple[str, ...] = ()
        if host:
            self.host, self.host_names = compile_host(host)
        self.query: list[tuple[str, str]] = [(k, v) for k, v in rule.get("query", ())]

    def match(self, path: str, query: str, host: str | None) -> dict[str, str] | None:
        """Captured values, percent-encoded, by name ("splat" included); None if no match."""
        captures: dict[str, str] = {}
        if self.host is not None:
            if host is None:
                return None
            found = self.host.fullmatch(host.lower().rstrip("."))
            if found is None:
                return None
            captures.update((n, _encode(found[f"p_{n}"], slash=False)) for n in self.host_names)
        pattern = self.path
        if pattern.regex is not None:
            if not path.startswith(pattern.prefix):
                return None
            found = pattern.regex.fullmatch(path)
            if found is None:
                return None
            for name in pattern.names:
                captures[name] = _encode(found[f"p_{name}"], slash=False)
            if pattern.splat:
                captures["splat"] = _encode(found["splat"] or "", slash=True)
        if self.query:
            values: dict[str, str] = {}
            for key, value in parse_qsl(query, keep_blank_values=True):
                values.setdefault(key, value)
            for key, wanted in self.query:
                if key not in values:
                    return None
                if wanted.startswith(":") and NAME.fullmatch(wanted[1:]):
                    captures[wanted[1:]] = _encode(values[key], slash=False)
                elif wanted and values[key] != wanted:
                    return None
        return captures


class _Index:
    """Rules split into a dict of literal paths and a list of pattern rules, both in order."""

    def __init__(self, rules: list[dict[str, Any]], trailing_slash: bool) -> None:
        self.trailing_slash = trailing_slash
        self.rules = [_Rule(i, rule, trailing_slash) for i, rule in enumerate(rules)]
        # Two indexes: all rules, and forced rules only (all that apply where a file exists).
        self.literal: tuple[dict[str, list[int]], dict[str, list[int]]] = ({}, {})
        self.patterns: tuple[list[int], list[int]] = ([], [])
        for rule, raw in zip(self.rules, rules, strict=True):
            for forced_only in (False, True) if raw.get("force") else (False,):
                if rule.path.literal is not None:
                    self.literal[forced_only].setdefault(rule.path.literal, []).append(rule.index)
                else:
                    self.patterns[forced_only].append(rule.index)

    def candidates(self, path: str, forced_only: bool = False) -> Iterator[_Rule]:
        """Rules that may match `path`, in file order."""
        key = normalise(path) if self.trailing_slash else path
        for i in heapq.merge(self.literal[forced_only].get(key, ()), self.patterns[forced_only]):
            yield self.rules[i]


class CompiledRules:
    """A manifest's header and redirect rules, ready to match; build once per manifest."""

    def __init__(self, headers: list[dict[str, Any]], redirects: list[dict[str, Any]]) -> None:
        self._header_rules = headers
        self._redirect_rules = redirects
        self._headers: _Index | None = None
        self._redirects: _Index | None = None
        self._header_cache: BoundedCache[
            tuple[str, str | None], tuple[list[tuple[str, str]], frozenset[str]]
        ] = BoundedCache(_HEADER_CACHE_SIZE)

    def redirect_for(self, path: str, query: str, file_exists: bool,
                     host: str | None = None) -> RedirectResult | None:
        """The first rule that applies to the request, or None (serve the file or the 404).

        `path` is decoded and starts with "/"; `query` is the raw query string without "?";
        when `file_exists`, only forced rules apply. `host` is needed only by rules written
        with an absolute URL; without it they never match. The request's query string is
        appended to the target unless the target has its own or the rule has query
        conditions (see the module docstring). The target is percent-encoded.
        """
        if not self._redirect_rules:
            return None
        if self._redirects is None:
            self._redirects = _Index(self._redirect_rules, trailing_slash=True)
        for matcher in self._redirects.candidates(path, forced_only=file_exists):
            rule = self._redirect_rules[matcher.index]
            captures = matcher.match(path, query, host)
            if captures is None:
                continue
            target = _target(rule, captures, query)
            if 300 <= rule["status"] < 400 and _is_same(target, path, query):
                continue
            return RedirectResult(rule["status"], target, rule["force"])
        return None

    def headers_for(self, path: str,
                    host: str | None = None) -> tuple[list[tuple[str, str]], set[str]]:
        """Headers to add (in order) and lowercase names to detach, for a decoded path."""
        if not self._header_rules:
            return [], set()
        key = (path, host)
        cached = self._header_cache.get(key)
        if cached is None:
            cached = self._header_cache.put(key, self._compute_headers(path, host))
        return list(cached[0]), set(cached[1])

    def _compute_headers(self, path: str,
                         host: str | None) -> tuple[list[tuple[str, str]], frozenset[str]]:
        if self._headers is None:
            self._headers = _Index(self._header_rules, trailing_slash=False)
        found: dict[str, list[str]] = {}
        detached: set[str] = set()
        for matcher in self._headers.candidates(path):
            captures = matcher.match(path, "", host)
            if captures is None:
                continue
            rule = self._header_rules[matcher.index]
            for name in rule.get("detach", ()):
                found.pop(name, None)
                detached.add(name)
            for name, value in rule.get("set", ()):
                value = substitute(value, captures)
                lower = name.lower()
                if lower in found:
                    found[lower][1] += ", " + value
                else:
                    found[lower] = [name, value]
                detached.discard(lower)
        return [(name, value) for name, value in found.values()], frozenset(detached)


def _target(rule: dict[str, Any], captures: dict[str, str], query: str) -> str:
    """The rule's target with captures written in and the request's query passed through."""
    target = substitute(rule["to"], captures)
    if "?" in target or rule.get("query") or not query:
        return target
    base, hash_, fragment = target.partition("#")
    return f"{base}?{_UNSAFE_QUERY.sub(_escape, query)}{hash_}{fragment}"


def _escape(match: re.Match[str]) -> str:
    """Percent-encode what a server should never have let into a query (spaces, controls)."""
    return quote(match.group(), safe="")


def _is_same(target: str, path: str, query: str) -> bool:
    if not target.startswith("/"):
        return False
    target_path, _, target_query = target.partition("#")[0].partition("?")
    return normalise(unquote(target_path)) == normalise(path) and target_query == query

