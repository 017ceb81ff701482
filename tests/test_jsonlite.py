"""pushsite.jsonlite (the deploy client's JSON without `import json`) against json itself,
and the regex-free name and path checks the client's start uses against the regexes they
replaced."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsite import jsonlite, names
from pushsite.deploy import paths
from pushsite.errors import ConfigError

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


@given(_VALUES, st.sampled_from([(", ", ": "), (",", ":")]))
def test_dumps_writes_what_json_writes(value: Any, separators: tuple[str, str]) -> None:
    assert jsonlite.dumps(value, separators) == json.dumps(value, separators=separators)


@given(_VALUES, st.sampled_from(["", " ", "\n\t\r "]))
def test_loads_reads_what_json_reads(value: Any, space: str) -> None:
    text = space + json.dumps(value) + space
    assert repr(jsonlite.loads(text)) == repr(json.loads(text))
    assert repr(jsonlite.loads(text.encode())) == repr(json.loads(text.encode()))


@pytest.mark.parametrize("text", ["", " ", "[1,", "{}x", "nul", '"\\x"', "[1] [2]",
                                  "\ufeff{}", '{"a" 1}', b"\xff"])
def test_loads_refuses_what_json_refuses(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsonlite.loads(text)


def test_dumps_refuses_what_json_refuses() -> None:
    circle: list[Any] = []
    circle.append(circle)
    with pytest.raises(ValueError, match="Circular"):
        jsonlite.dumps(circle)
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        jsonlite.dumps({"a": object()})


_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_BRANCH = re.compile(r"^[^\x00-\x20\x7f~^:?*\[\\]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_TEXT = st.one_of(st.text(max_size=70),
                  st.text(st.sampled_from("ab-z09:C\\ ~^[é\x7f\x85\x9f\x00./\t"), max_size=70))


@settings(max_examples=500)
@given(_TEXT)
def test_the_string_checks_agree_with_the_regexes_they_replaced(text: str) -> None:
    # `$` let one trailing newline through ("blog\n"); the checks refuse it now
    assert names._is_label(text) == (bool(_LABEL.match(text)) and not text.endswith("\n"))
    assert names._NOT_IN_REF.isdisjoint(text) == \
        (not text or bool(_BRANCH.match(text)) and not text.endswith("\n"))
    assert (not paths._CONTROL.isdisjoint(text)) == bool(_CONTROL.search(text))
    assert paths._is_drive(text) == bool(_DRIVE.match(text))


@pytest.mark.parametrize("check", [names.check_site_name, names.check_branch_name])
def test_a_name_ending_in_a_newline_is_refused(check: Any) -> None:
    with pytest.raises(ConfigError):
        check("blog\n")
