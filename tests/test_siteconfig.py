"""Parsing the site's own files: `_redirects`, `_headers` and `pushsite.toml`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pushsite.deploy.siteconfig import (
    MAX_FILE,
    MAX_LINE,
    MAX_RULES,
    BuildSettings,
    SiteSettings,
    parse_cname,
    parse_headers,
    parse_pushsite_toml,
    parse_redirects,
)
from pushsite.errors import SiteConfigError


def error_of(parse: Callable[[Any], object], text: Any) -> str:
    """The message of the SiteConfigError that parsing `text` raises."""
    with pytest.raises(SiteConfigError) as caught:
        parse(text)
    return str(caught.value)


# --- _redirects --------------------------------------------------------------------------------


def test_redirect_rule_has_every_field_with_defaults() -> None:
    assert parse_redirects("/old /new\n") == [
        {"line": 1, "host": None, "path": "/old", "query": [], "to": "/new", "status": 301,
         "force": False}
    ]


@pytest.mark.parametrize("status", [200, 301, 302, 303, 307, 308, 404])
def test_every_supported_status_parses(status: int) -> None:
    [rule] = parse_redirects(f"/a /b {status}")
    assert (rule["status"], rule["force"]) == (status, False)


def test_bang_forces_a_rule() -> None:
    [rule] = parse_redirects("/app/ /app/index.html 200!")
    assert (rule["status"], rule["force"]) == (200, True)


def test_comments_blank_lines_and_line_numbers() -> None:
    text = "# redirects\n\n   \n/a /b 302\n  # indented comment\n/c /d\n"
    rules = parse_redirects(text)
    assert [(r["line"], r["path"], r["status"]) for r in rules] == [(4, "/a", 302), (6, "/c", 301)]


def test_comment_after_the_fields_is_ignored() -> None:
    [rule] = parse_redirects("/a /b 302 # moved in 2024")
    assert rule["to"] == "/b" and rule["status"] == 302
    [rule] = parse_redirects("/a /b # no status")
    assert rule["status"] == 301


def test_tabs_and_many_spaces_separate_fields() -> None:
    [rule] = parse_redirects("/a\t\t/b    307")
    assert (rule["path"], rule["to"], rule["status"]) == ("/a", "/b", 307)


def test_crlf_and_byte_order_mark_are_accepted() -> None:
    rules = parse_redirects("\ufeff/a /b\r\n/c /d 302\r\n")
    assert [(r["path"], r["to"], r["status"]) for r in rules] == [("/a", "/b", 301),
                                                                  ("/c", "/d", 302)]


def test_query_conditions_parse_in_order() -> None:
    [rule] = parse_redirects("/articles id=:id tag=:tag /posts/:tag/:id 301")
    assert rule["query"] == [["id", ":id"], ["tag", ":tag"]]
    assert rule["to"] == "/posts/:tag/:id"


def test_query_condition_with_literal_value() -> None:
    [rule] = parse_redirects("/store id=42 /blog/answer")
    assert rule["query"] == [["id", "42"]]


def test_query_condition_with_a_key_alone() -> None:
    [rule] = parse_redirects("/search color /search/_color/index.html 200")
    assert rule["query"] == [["color", ""]]
    assert rule["to"] == "/search/_color/index.html"


def test_absolute_target_and_splat_and_placeholders() -> None:
    rules = parse_redirects(
        "/news/:year/:month/:slug /blog/:year-:month-:slug.html\n"
        "/docs/* https://docs.example.com/:splat 302\n"
    )
    assert rules[0]["to"] == "/blog/:year-:month-:slug.html"
    assert rules[1]["to"] == "https://docs.example.com/:splat"


def test_domain_level_rule_keeps_its_host() -> None:
    [rule] = parse_redirects("https://Blog.Example.com/* https://example.com/blog/:splat 301!")
    assert (rule["host"], rule["path"], rule["force"]) == ("blog.example.com", "/*", True)
    [rule] = parse_redirects("https://:sub.example.com /:sub 302")
    assert (rule["host"], rule["path"]) == (":sub.example.com", "/")


def test_spa_fallback() -> None:
    [rule] = parse_redirects("/*    /index.html   200")
    assert (rule["path"], rule["to"], rule["status"], rule["force"]) == (
        "/*", "/index.html", 200, False)


def test_wrong_status_names_file_line_and_allowed_values() -> None:
    message = error_of(parse_redirects, "# one\n\n/a /b 301\n/c /d 30x\n")
    assert message == (
        '_redirects line 4: status "30x" is not one of 200, 301, 302, 303, 307, 308, 404'
    )


@pytest.mark.parametrize("status", ["410", "500", "3011", "200!!", "!", "-301"])
def test_other_statuses_are_refused(status: str) -> None:
    assert "is not one of 200, 301" in error_of(parse_redirects, f"/a /b {status}")


def test_custom_filename_appears_in_errors() -> None:
    message = error_of(lambda t: parse_redirects(t, "public/_redirects"), "/a")
    assert message.startswith("public/_redirects line 1: ")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("/a", '"/a" has no target'),
        ("/a # comment", '"/a" has no target'),
        ("/a id=:id", "has no target"),
        ("old /new", 'path "old" must start with "/"'),
        ("/a new", 'target "new" must start with "/"'),
        ("/a https:///x", "has no host"),
        ("/a/*/b/* /c", 'more than one "*"'),
        ("/a/:x/:x /c", 'placeholder ":x" appears twice'),
        ("/a/:splat /c", '":splat" is reserved'),
        ("/a /b/:splat", 'uses :splat but the path has no "*"'),
        ("/store?id=1 /blog", 'write conditions after the path, e.g. "/store id=:id'),
        ("/a#top /b", '"#" fragment'),
        ("/a /b 301 extra", 'unexpected "extra"'),
        ("/a /docs/../secret 200", 'holds a "." or ".." segment'),
        ("/a /./b", 'holds a "." or ".." segment'),
        ("/a /b 301 Country=au,nz", 'condition "Country=" (country, language, role or cookie)'),
        ("/a /b 302 Language=fr", "is not supported"),
        ("/admin/* /admin 200! Role=admin", "is not supported"),
        ("/a Cookie=x /b", "is not supported"),
        ("/blog/* https://blog.example.com/:splat 200", "proxying is not supported"),
        ("/a https://example.com/404 404", "proxying is not supported"),
        ("/a =x /b", 'needs a key and a value'),
        ("/a x= /b", 'needs a key and a value'),
        ("/a/:id id=:id /b", 'placeholder ":id" is used twice'),
        ("https://example.com:8080/a /b", "may not name a port"),
        ("https://user@example.com/a /b", "may not name a port or user"),
        ("https://ex_ample.com/a /b", 'invalid label "ex_ample"'),
        ("https://localhost/a /b", "is not a domain"),
        ("https://:x.example.com/:x /b", 'placeholder ":x" is in both host and path'),
        ("/a\x00 /b", "control character"),
    ],
)
def test_malformed_redirect_lines_are_errors_with_their_line(text: str, fragment: str) -> None:
    message = error_of(parse_redirects, "/ok /fine\n" + text + "\n")
    assert message.startswith("_redirects line 2: "), message
    assert fragment in message, message


def test_too_many_redirect_rules() -> None:
    text = "# many\n" + "".join(f"/p{i} /q{i}\n" for i in range(MAX_RULES + 1))
    message = error_of(parse_redirects, text)
    assert message.startswith(f"_redirects line {MAX_RULES + 2}: more than 2,000 rules")
    assert len(parse_redirects("".join(f"/p{i} /q{i}\n" for i in range(MAX_RULES)))) == MAX_RULES


def test_too_long_line() -> None:
    message = error_of(parse_redirects, "/a /b\n/" + "x" * MAX_LINE + " /b\n")
    assert message.startswith("_redirects line 2: the line is 2,004 characters; the limit is 2,000")


def test_too_large_file() -> None:
    message = error_of(parse_redirects, "#" * (MAX_FILE + 1))
    assert message.startswith("_redirects is 524,289 characters; the limit is 524,288")


# --- _headers ----------------------------------------------------------------------------------

HEADERS = """\
# security for every page
/*
  X-Frame-Options: DENY
  X-Content-Type-Options: nosniff

/static/*
\tCache-Control: public, max-age=31536000, immutable
  ! X-Frame-Options
  # a comment inside a block

https://:project.pages.dev/*
  X-Robots-Tag: noindex
"""


def test_headers_blocks_with_set_and_detach() -> None:
    assert parse_headers(HEADERS) == [
        {"line": 2, "host": None, "path": "/*", "detach": [],
         "set": [["X-Frame-Options", "DENY"], ["X-Content-Type-Options", "nosniff"]]},
        {"line": 6, "host": None, "path": "/static/*", "detach": ["x-frame-options"],
         "set": [["Cache-Control", "public, max-age=31536000, immutable"]]},
        {"line": 11, "host": ":project.pages.dev", "path": "/*", "detach": [],
         "set": [["X-Robots-Tag", "noindex"]]},
    ]


def test_header_value_keeps_colons_and_hashes() -> None:
    [rule] = parse_headers("/a\n  Link: <https://example.com/x#y>; rel=preload\n")
    assert rule["set"] == [["Link", "<https://example.com/x#y>; rel=preload"]]


def test_same_header_twice_in_a_block_is_kept_twice() -> None:
    [rule] = parse_headers("/a\n  Vary: Origin\n  vary: Accept\n")
    assert rule["set"] == [["Vary", "Origin"], ["vary", "Accept"]]


def test_detach_only_block_and_repeated_detach() -> None:
    [rule] = parse_headers("/a\n  ! X-Robots-Tag\n  !x-robots-tag\n")
    assert (rule["set"], rule["detach"]) == ([], ["x-robots-tag"])


def test_empty_headers_file_has_no_rules() -> None:
    assert parse_headers("") == []
    assert parse_headers("# nothing yet\n\n") == []


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("  X-A: b\n", 1, "comes before any path"),
        ("/a\nX-A: b\n", 2, "(indent header lines under their path)"),
        ("/a\n  X-A: b\nstatic/*\n  X-B: c\n", 3, 'expected a path such as "/*"'),
        ("/a X-A: b\n", 1, 'holds a space'),
        ("/a\n/b\n  X-A: b\n", 1, 'path "/a" has no header lines under it'),
        ("/a\n  X-A: b\n/b\n", 3, 'path "/b" has no header lines under it'),
        ("/a\n  X-A b\n", 2, 'expected "Name: value" or "! Name"'),
        ("/a\n  X A: b\n", 2, 'not a valid header name'),
        ("/a\n  : b\n", 2, 'not a valid header name'),
        ("/a\n  !\n", 2, 'not a valid header name'),
        ("/a\n  X-A:\n", 2, 'has no value; to remove a header write "! X-A"'),
        ("/a\n  X-A: caf\u00e9\n", 2, "outside printable ASCII"),
        ("/a\n  Content-Length: 5\n", 2, "set by the server"),
        ("/a\n  ! Transfer-Encoding\n", 2, "set by the server"),
        ("/a?x=1\n  X-A: b\n", 1, 'may not hold "?" or "#"'),
        ("/*/*\n  X-A: b\n", 1, 'more than one "*"'),
        ("/:a/:a\n  X-A: b\n", 1, "appears twice"),
        ("https://example.com:443/*\n  X-A: b\n", 1, "may not name a port"),
        ("/a\n  X-A: b\x01c\n", 2, "control character"),
    ],
)
def test_malformed_headers_are_errors_with_their_line(text: str, line: int, fragment: str) -> None:
    message = error_of(parse_headers, text)
    assert message.startswith(f"_headers line {line}: "), message
    assert fragment in message, message


def test_too_many_header_rules() -> None:
    text = "".join(f"/p{i}\n  X-N: {i}\n" for i in range(MAX_RULES + 1))
    message = error_of(parse_headers, text)
    assert message.startswith(f"_headers line {2 * MAX_RULES + 1}: more than 2,000 rules")


def test_too_long_header_line() -> None:
    message = error_of(parse_headers, "/a\n  X-A: " + "v" * MAX_LINE + "\n")
    assert message.startswith("_headers line 2: the line is 2,007 characters")


# --- pushsite.toml -----------------------------------------------------------------------------

FULL_TOML = b"""\
production_branch = "release"
publish = "./dist/"
build = "npm run build"
exclude = ["*.map", "drafts/*"]
domains = ["WWW.Example.com", "example.com", "www.example.com"]
tags = true
"""


def test_every_setting() -> None:
    assert parse_pushsite_toml(FULL_TOML) == SiteSettings(
        production_branch="release",
        publish="dist",
        build=BuildSettings(command="npm run build"),
        exclude=("*.map", "drafts/*"),
        domains=("www.example.com", "example.com"),
        tags=True,
    )


def test_empty_file_gives_defaults() -> None:
    assert parse_pushsite_toml(b"") == SiteSettings()
    assert parse_pushsite_toml(b"# just a comment\n").tags is False


@pytest.mark.parametrize(
    ("publish", "expected"),
    [("dist", "dist"), ("./public", "public"), ("site/out/", "site/out"), (".", None),
     ("./", None), ("a//b", "a/b")],
)
def test_publish_folder_is_normalised(publish: str, expected: str | None) -> None:
    assert parse_pushsite_toml(f'publish = "{publish}"'.encode()).publish == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('publish = "../site"', 'may not leave the bundle with ".."'),
        ('publish = "a/../../b"', 'may not leave the bundle'),
        ('publish = "/srv/site"', "must be a relative folder"),
        ('publish = "C:/site"', "must be a relative folder"),
        ('publish = "a\\\\b"', "must be a relative folder"),
        ("publish = 3", "publish must be a string, found 3"),
        ("build = ['x']", "build must be a table"),
        ("production_branch = 1", "production_branch must be a string"),
        ('production_branch = "bad..name"', "invalid branch name"),
        ('exclude = "*.map"', "exclude must be a list of non-empty strings"),
        ('exclude = ["ok", 3]', "exclude must be a list"),
        ('exclude = [""]', "exclude must be a list"),
        ('exclude = ["/drafts/*"]', "write 'drafts/*', not '/drafts/*'"),
        ('exclude = ["./x"]', "relative to the publish folder"),
        ('domains = ["not a host"]', "domains: invalid domain"),
        ('domains = ["localhost"]', "invalid domain 'localhost'"),
        ('tags = "yes"', "tags must be true or false, found 'yes'"),
        ('publsh = "dist"', 'unknown setting "publsh"; known settings: build, domains, '
                            "exclude, production_branch, publish, site, tags"),
        ("[deploy]\nx = 1", 'unknown setting "deploy"'),
    ],
)
def test_bad_settings_name_the_line(text: str, fragment: str) -> None:
    message = error_of(parse_pushsite_toml, ("# settings\n" + text).encode())
    assert message.startswith("pushsite.toml line 2: "), message
    assert fragment in message, message


def test_toml_syntax_error_names_the_line() -> None:
    message = error_of(parse_pushsite_toml, b'build = "x"\n\npublish = \n')
    assert message.startswith("pushsite.toml line 3: "), message
    assert "check the TOML syntax" in message


def test_toml_error_at_end_of_document() -> None:
    message = error_of(parse_pushsite_toml, b'build = "unterminated')
    assert message.startswith("pushsite.toml"), message
    assert "check the TOML syntax" in message


def test_toml_not_utf8_and_too_large() -> None:
    assert "not valid UTF-8" in error_of(parse_pushsite_toml, b'build = "\xff"')
    assert "the limit is 65,536" in error_of(parse_pushsite_toml, b"#" * 70_000)


def test_toml_custom_filename() -> None:
    message = error_of(lambda d: parse_pushsite_toml(d, "site/pushsite.toml"), b"tags = 1")
    assert message.startswith("site/pushsite.toml line 1: ")


# --- CNAME (GitHub Pages) ----------------------------------------------------------------------


def test_cname_names_one_domain() -> None:
    assert parse_cname("WWW.Example.com\n") == "www.example.com"
    assert parse_cname("\n  docs.example.org  \n\n") == "docs.example.org"
    assert parse_cname("https://example.com/") == "example.com"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "names 0 domains"), ("a.example.com\nb.example.com\n", "names 2 domains"),
     ("\nlocalhost\n", "CNAME line 2: invalid domain 'localhost'")],
)
def test_bad_cname(text: str, fragment: str) -> None:
    assert fragment in error_of(parse_cname, text)


# --- properties --------------------------------------------------------------------------------

_segment = st.text(alphabet="abcxyz019-_.~%", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
_path = st.lists(_segment, max_size=4).map(lambda parts: "/" + "/".join(parts))
_status = st.sampled_from(["", "200", "301", "302!", "404", "308"])


@given(_path, _path, _status, st.booleans())
def test_parsed_redirects_round_trip_through_json(source: str, target: str, status: str,
                                                  splat: bool) -> None:
    if splat:
        source, target = source.rstrip("/") + "/*", target.rstrip("/") + "/:splat"
    rules = parse_redirects(f"{source} {target} {status}\n")
    assert json.loads(json.dumps(rules)) == rules
    assert rules[0]["path"] == source and rules[0]["to"] == target


@given(st.lists(st.tuples(_path, st.text(alphabet="abcXYZ-", min_size=1, max_size=10),
                          st.text(alphabet="abc ;=,/", min_size=1, max_size=20)), max_size=5))
def test_parsed_headers_round_trip_through_json(blocks: list[tuple[str, str, str]]) -> None:
    text = "".join(f"{path}\n  {name}: {value}\n" for path, name, value in blocks
                   if value.strip())
    rules = parse_headers(text)
    assert json.loads(json.dumps(rules)) == rules


@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_site_config_error(text: str) -> None:
    for parse in (parse_redirects, parse_headers):
        try:
            rules = parse(text)
        except SiteConfigError as exc:
            assert exc.message.startswith(("_redirects", "_headers"))
        else:
            assert json.loads(json.dumps(rules)) == rules


@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_toml_parse_or_raise_site_config_error(data: bytes) -> None:
    try:
        parse_pushsite_toml(data)
    except SiteConfigError as exc:
        assert exc.message.startswith("pushsite.toml")
