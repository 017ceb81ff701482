"""Request-time matching of `_redirects` and `_headers` rules, as the edge calls it."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pushsite.deploy.siteconfig import parse_headers, parse_redirects
from pushsite.rules import CompiledRules, RedirectResult, compile_path


def redirects(text: str) -> CompiledRules:
    """Rules as the edge gets them: parsed, stored as JSON in the manifest, loaded back."""
    return CompiledRules([], json.loads(json.dumps(parse_redirects(text))))


def headers(text: str) -> CompiledRules:
    return CompiledRules(json.loads(json.dumps(parse_headers(text))), [])


def go(rules: CompiledRules, path: str, query: str = "", exists: bool = False,
       host: str | None = None) -> tuple[int, str] | None:
    result = rules.redirect_for(path, query, exists, host=host)
    return None if result is None else (result.status, result.target)


# --- redirects: matching -----------------------------------------------------------------------


def test_plain_redirect_and_no_match() -> None:
    rules = redirects("/old /new")
    assert rules.redirect_for("/old", "", False) == RedirectResult(301, "/new", False)
    assert go(rules, "/older") is None
    assert go(rules, "/ol") is None
    assert go(rules, "/") is None


def test_no_rules_means_no_redirect() -> None:
    assert CompiledRules([], []).redirect_for("/x", "", False) is None


def test_first_match_wins() -> None:
    rules = redirects("/a /first 302\n/a /second 301\n/* /fallback 200\n")
    assert go(rules, "/a") == (302, "/first")
    rules = redirects("/* /fallback 200\n/a /never 301\n")
    assert go(rules, "/a") == (200, "/fallback")


def test_first_match_wins_between_literal_and_pattern_rules() -> None:
    rules = redirects("/blog/* /b/:splat 302\n/blog/x /literal 301\n/blog/y /y 301\n")
    assert go(rules, "/blog/x") == (302, "/b/x")
    rules = redirects("/blog/x /literal 301\n/blog/* /b/:splat 302\n")
    assert go(rules, "/blog/x") == (301, "/literal")
    assert go(rules, "/blog/z") == (302, "/b/z")


def test_trailing_slash_is_ignored_when_matching_redirects() -> None:
    rules = redirects("/about /about-us\n/team/ /people\n")
    assert go(rules, "/about/") == (301, "/about-us")
    assert go(rules, "/team") == (301, "/people")
    assert go(rules, "/team/") == (301, "/people")


def test_rule_pointing_at_its_own_path_does_not_loop() -> None:
    rules = redirects("/about/ /about\n/* /index.html 200\n")
    assert go(rules, "/about") == (200, "/index.html")
    assert go(rules, "/about/") == (200, "/index.html")


def test_paths_are_case_sensitive() -> None:
    assert go(redirects("/About /x"), "/about") is None


def test_percent_encoded_rule_matches_the_decoded_path() -> None:
    rules = redirects("/authors/c%C3%A9line /authors/about-c%C3%A9line\n")
    assert go(rules, "/authors/céline") == (301, "/authors/about-c%C3%A9line")


# --- redirects: splats and placeholders --------------------------------------------------------


def test_splat_carries_the_rest_of_the_path() -> None:
    rules = redirects("/news/* /blog/:splat")
    assert go(rules, "/news/2024/05/hello") == (301, "/blog/2024/05/hello")
    assert go(rules, "/news/") == (301, "/blog/")
    assert go(rules, "/news") == (301, "/blog/")
    assert go(rules, "/newsletter") is None


def test_splat_inside_a_path() -> None:
    rules = redirects("/img/*.png /images/:splat.webp 302")
    assert go(rules, "/img/a/b.png") == (302, "/images/a/b.webp")
    assert go(rules, "/img/a/b.jpg") is None


def test_splat_value_is_percent_encoded_in_the_target() -> None:
    rules = redirects("/docs/* https://docs.example.com/:splat 302")
    assert go(rules, "/docs/a b/ü?") == (302, "https://docs.example.com/a%20b/%C3%BC%3F")


def test_placeholders_match_one_segment() -> None:
    rules = redirects("/news/:year/:month/:slug /blog/:year-:month-:slug.html")
    assert go(rules, "/news/2024/05/hi") == (301, "/blog/2024-05-hi.html")
    assert go(rules, "/news/2024/05/hi/") == (301, "/blog/2024-05-hi.html")
    assert go(rules, "/news/2024/05") is None
    assert go(rules, "/news/2024/05/hi/there") is None


def test_placeholder_value_cannot_carry_a_slash_into_the_target() -> None:
    rules = redirects("/u/:name /people/:name 302")
    assert go(rules, "/u/a%2Fb") == (302, "/people/a%252Fb")


def test_unknown_reference_in_target_is_left_as_written() -> None:
    rules = redirects("/a/:x https://example.com:8443/:x/:y 302")
    assert go(rules, "/a/1") == (302, "https://example.com:8443/1/:y")


def test_colon_inside_a_segment_is_literal() -> None:
    rules = redirects("/wiki/Special:Random /random 302")
    assert go(rules, "/wiki/Special:Random") == (302, "/random")
    assert go(rules, "/wiki/Special:Other") is None


# --- redirects: statuses, shadowing, force -----------------------------------------------------


def test_spa_fallback_serves_index_only_where_no_file_exists() -> None:
    rules = redirects("/* /index.html 200")
    assert go(rules, "/") == (200, "/index.html")
    assert go(rules, "/app/settings") == (200, "/index.html")
    assert go(rules, "/app.js", exists=True) is None


def test_existing_file_shadows_unforced_rules_only() -> None:
    rules = redirects("/page /elsewhere 301\n/forced /elsewhere 302!\n")
    assert go(rules, "/page", exists=True) is None
    assert go(rules, "/page", exists=False) == (301, "/elsewhere")
    assert rules.redirect_for("/forced", "", True) == RedirectResult(302, "/elsewhere", True)


def test_shadowed_rule_lets_a_later_forced_rule_apply() -> None:
    rules = redirects("/a /one 301\n/* /two 302!\n")
    assert go(rules, "/a", exists=True) == (302, "/two")
    assert go(rules, "/a", exists=False) == (301, "/one")


def test_forced_rules_keep_file_order_where_a_file_exists() -> None:
    rules = redirects("/* /spa 302!\n/x /literal 301!\n")
    assert go(rules, "/x", exists=True) == (302, "/spa")
    rules = redirects("/x /literal 301!\n/y /other 301\n/* /spa 302!\n")
    assert go(rules, "/x", exists=True) == (301, "/literal")
    assert go(rules, "/y", exists=True) == (302, "/spa")


def test_custom_404_page_per_folder() -> None:
    rules = redirects("/en/* /en/404.html 404\n/de/* /de/404.html 404\n")
    assert go(rules, "/en/missing") == (404, "/en/404.html")
    assert go(rules, "/de/x/y") == (404, "/de/404.html")
    assert go(rules, "/fr/x") is None
    assert go(rules, "/en/there", exists=True) is None


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_status_is_returned_as_written(status: int) -> None:
    assert go(redirects(f"/a /b {status}"), "/a") == (status, "/b")


# --- redirects: query strings ------------------------------------------------------------------


def test_query_string_passes_through_to_a_plain_target() -> None:
    rules = redirects("/old /new\n/spa/* /index.html 200\n")
    assert go(rules, "/old", "a=1&b=2") == (301, "/new?a=1&b=2")
    assert go(rules, "/spa/x", "q=%20") == (200, "/index.html?q=%20")
    assert go(rules, "/old", "a=b c\r\n") == (301, "/new?a=b%20c%0D%0A")


def test_target_with_its_own_query_replaces_the_original() -> None:
    rules = redirects("/old /new?from=old 302")
    assert go(rules, "/old", "a=1") == (302, "/new?from=old")


def test_query_goes_before_a_fragment() -> None:
    rules = redirects("/old /new#part 302")
    assert go(rules, "/old", "a=1") == (302, "/new?a=1#part")
    assert go(rules, "/old") == (302, "/new#part")


def test_query_condition_captures_a_value() -> None:
    rules = redirects("/store id=:id /blog/:id 301\n/store /shop 302\n")
    assert go(rules, "/store", "id=42") == (301, "/blog/42")
    assert go(rules, "/store", "x=1&id=42&id=7") == (301, "/blog/42")
    assert go(rules, "/store", "") == (302, "/shop")
    assert go(rules, "/store", "ID=42") == (302, "/shop?ID=42")


def test_every_query_condition_must_hold() -> None:
    rules = redirects("/a id=:id tag=:tag /posts/:tag/:id\n")
    assert go(rules, "/a", "tag=x&id=1") == (301, "/posts/x/1")
    assert go(rules, "/a", "id=1") is None


def test_query_condition_with_a_literal_value() -> None:
    rules = redirects("/store id=42 /answer 302\n")
    assert go(rules, "/store", "id=42") == (302, "/answer")
    assert go(rules, "/store", "id=43") is None


def test_query_condition_with_a_key_alone_needs_only_the_key() -> None:
    rules = redirects("/search color /colors 200\n/search /all 200\n")
    assert go(rules, "/search", "color") == (200, "/colors")
    assert go(rules, "/search", "color=red&x=1") == (200, "/colors")
    assert go(rules, "/search", "colour=red") == (200, "/all?colour=red")


def test_query_captures_are_encoded_and_may_be_empty() -> None:
    rules = redirects("/s q=:q /search?q=:q 302")
    assert go(rules, "/s", "q=a+b%26c") == (302, "/search?q=a%20b&c")
    assert go(rules, "/s", "q=") == (302, "/search?q=")


# --- redirects: hosts --------------------------------------------------------------------------


def test_domain_rule_matches_only_its_host() -> None:
    rules = redirects("https://blog.example.com/* https://example.com/blog/:splat 301!\n")
    assert go(rules, "/post", host="blog.example.com") == (301, "https://example.com/blog/post")
    assert go(rules, "/post", host="BLOG.example.com.") == (301, "https://example.com/blog/post")
    assert go(rules, "/post", host="www.example.com") is None
    assert go(rules, "/post") is None


def test_host_placeholder() -> None:
    rules = redirects("https://:lang.example.com/* https://example.com/:lang/:splat 302\n")
    assert go(rules, "/a", host="fr.example.com") == (302, "https://example.com/fr/a")
    assert go(rules, "/a", host="a.b.example.com") is None


# --- headers -----------------------------------------------------------------------------------

SITE_HEADERS = """\
/*
  X-Frame-Options: DENY
  Cache-Control: public, max-age=0
/assets/*
  Cache-Control: immutable
  ! X-Frame-Options
/embed/*
  ! X-Frame-Options
  X-Frame-Options: SAMEORIGIN
/movies/:title
  X-Movie: :title
/files/*
  Content-Disposition: attachment; filename=":splat"
/secure/page
  X-Secure: 1
"""


def test_headers_from_every_matching_rule_combine_in_order() -> None:
    rules = headers(SITE_HEADERS)
    assert rules.headers_for("/") == (
        [("X-Frame-Options", "DENY"), ("Cache-Control", "public, max-age=0")], set())
    assert rules.headers_for("/secure/page") == (
        [("X-Frame-Options", "DENY"), ("Cache-Control", "public, max-age=0"),
         ("X-Secure", "1")], set())


def test_repeated_header_names_join_with_comma_in_any_case() -> None:
    rules = headers("/*\n  Vary: Origin\n/a\n  vary: Accept\n  VARY: Cookie\n")
    assert rules.headers_for("/a") == ([("Vary", "Origin, Accept, Cookie")], set())


def test_detach_removes_an_earlier_header_and_reports_the_name() -> None:
    added, detached = headers(SITE_HEADERS).headers_for("/assets/app.js")
    assert added == [("Cache-Control", "public, max-age=0, immutable")]
    assert detached == {"x-frame-options"}


def test_detach_then_set_replaces_the_header() -> None:
    added, detached = headers(SITE_HEADERS).headers_for("/embed/video")
    assert ("X-Frame-Options", "SAMEORIGIN") in added
    assert ("X-Frame-Options", "DENY") not in added
    assert detached == set()


def test_later_rule_may_set_a_detached_header_again() -> None:
    rules = headers("/*\n  ! Server\n/a\n  Server: mine\n")
    assert rules.headers_for("/a") == ([("Server", "mine")], set())
    assert rules.headers_for("/b") == ([], {"server"})


def test_header_values_get_placeholders_encoded() -> None:
    rules = headers(SITE_HEADERS)
    added, _ = rules.headers_for("/movies/Up")
    assert ("X-Movie", "Up") in added
    added, _ = rules.headers_for("/movies/a\r\nSet-Cookie: x")
    assert ("X-Movie", "a%0D%0ASet-Cookie:%20x") in added
    added, _ = rules.headers_for("/files/docs/report.pdf")
    assert ("Content-Disposition", 'attachment; filename="docs/report.pdf"') in added


def test_header_patterns_match_paths_exactly() -> None:
    rules = headers("/secure/page\n  X-Secure: 1\n")
    assert rules.headers_for("/secure/page/") == ([], set())
    assert rules.headers_for("/secure/pages") == ([], set())


def test_header_folder_splat_matches_the_folder_itself() -> None:
    rules = headers("/static/*\n  X-S: 1\n")
    assert rules.headers_for("/static")[0] == [("X-S", "1")]
    assert rules.headers_for("/static/a/b.css")[0] == [("X-S", "1")]
    assert rules.headers_for("/staticx")[0] == []


def test_header_host_rule_needs_the_host() -> None:
    rules = headers("https://:project.pages.dev/*\n  X-Robots-Tag: noindex\n")
    assert rules.headers_for("/", host="blog.pages.dev")[0] == [("X-Robots-Tag", "noindex")]
    assert rules.headers_for("/", host="example.com")[0] == []
    assert rules.headers_for("/")[0] == []


def test_headers_for_returns_fresh_copies() -> None:
    rules = headers("/*\n  X-A: 1\n  ! X-B\n")
    added, detached = rules.headers_for("/")
    added.append(("X-Evil", "1"))
    detached.add("x-a")
    assert rules.headers_for("/") == ([("X-A", "1")], {"x-b"})


def test_header_cache_stays_correct_past_its_size() -> None:
    rules = headers("/p/:n\n  X-N: :n\n")
    for i in range(5000):
        assert rules.headers_for(f"/p/{i}")[0] == [("X-N", str(i))]


def test_no_header_rules() -> None:
    assert CompiledRules([], []).headers_for("/x") == ([], set())


# --- patterns ----------------------------------------------------------------------------------


def test_literal_patterns_skip_the_regex() -> None:
    assert compile_path("/a/b", trailing_slash=True).regex is None
    assert compile_path("/a/b/", trailing_slash=True).literal == "/a/b"
    assert compile_path("/a/:b", trailing_slash=True).regex is not None
    assert compile_path("/a/*", trailing_slash=False).prefix == "/a"


# --- properties --------------------------------------------------------------------------------

MIXED = """\
/store id=:id /blog/:id 301
/news/:year/:slug /blog/:year/:slug 302
/docs/* https://docs.example.com/:splat 308
/img/*.png /images/:splat.webp
https://:sub.example.com/* /sites/:sub/:splat 302
/en/* /en/404.html 404
/forced /elsewhere 301!
/* /index.html 200
"""

_any_path = st.text(max_size=60).map(lambda s: "/" + s)


@given(_any_path, st.text(max_size=40), st.booleans(), st.one_of(st.none(), st.text(max_size=30)))
def test_matching_never_raises_and_targets_are_single_line(path: str, query: str, exists: bool,
                                                           host: str | None) -> None:
    rules = CompiledRules(parse_headers(SITE_HEADERS), parse_redirects(MIXED))
    result = rules.redirect_for(path, query, exists, host=host)
    if result is not None:
        assert result.target.startswith(("/", "https://"))
        assert not any(c.isspace() or ord(c) < 32 for c in result.target)
    added, detached = rules.headers_for(path, host=host)
    for name, value in added:
        assert name.lower() not in detached
        assert "\r" not in value and "\n" not in value


@given(st.lists(st.text(alphabet="abc-_.", min_size=1, max_size=6), min_size=1, max_size=4),
       st.booleans())
def test_literal_rule_matches_its_path_with_or_without_slash(parts: list[str], slash: bool) -> None:
    path = "/" + "/".join(parts)
    rules = redirects(f"{path} /target 302")
    assert go(rules, path + ("/" if slash else "")) == (302, "/target")
    assert go(rules, path + "x") is None


@given(st.lists(st.text(alphabet="abc-_.%20", min_size=1, max_size=6), min_size=1, max_size=4))
def test_splat_round_trips_any_tail(parts: list[str]) -> None:
    tail = "/".join(parts)
    result = redirects("/from/* /to/:splat 302").redirect_for("/from/" + tail, "", False)
    assert result is not None
    assert unquote(result.target) == "/to/" + tail
