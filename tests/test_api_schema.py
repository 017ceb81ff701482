"""Schemathesis checks the running API against the OpenAPI description it publishes.

Every operation gets a few generated requests with an admin token; each answer must be a
documented status, with a documented content type, matching its documented schema, and never a
server error. Bounded (a few examples per operation) so the run takes seconds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pushsite.config import load_config
from pushsite.service import Service
from pushsite.web.api import create_api
from support.servers import Server, serving


@schemathesis.check
def backends_stay_up(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                     case: schemathesis.Case[Any]) -> None:
    """The backends run throughout, so a 503 means a request's input broke one."""
    if response.status_code == 503:
        raise AssertionError(f"503 from a running server: {response.text[:200]}")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, ignored_auth,
          backends_stay_up]
EXAMPLES = int(os.environ.get("PUSHSITE_SCHEMA_EXAMPLES", "4"))  # more to hunt for bugs


# generated upload bodies go out as raw bytes (most are not gzip, and must be refused)
schemathesis.serializer.alias("application/gzip", "application/octet-stream")


@pytest.fixture(scope="module")
def schema_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("schema") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(schema_server: Server) -> str:
    return schema_server.new_token("--admin", "--name", "schemathesis")


def _description() -> dict[str, Any]:
    """The description the server publishes, built from the app itself (no backend opens)."""
    home = Path(tempfile.gettempdir()) / "pushsite-schema-unused"
    return create_api(Service(load_config(home=str(home)))).openapi()


DESCRIPTION = _description()
schema = schemathesis.openapi.from_dict(DESCRIPTION)


def test_the_server_publishes_this_description(schema_server: Server) -> None:
    served = httpx.get(f"{schema_server.url}/api/openapi.json", timeout=10).json()
    assert served == DESCRIPTION


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_answers_as_its_openapi_says(case: Any, schema_server: Server, admin: str) -> None:
    case.call_and_validate(base_url=f"{schema_server.url}/api",
                           headers={"Authorization": f"Bearer {admin}"}, checks=CHECKS)
