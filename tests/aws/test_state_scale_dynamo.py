"""Issue 20 on DynamoDB (bench/state_scale_dynamo.py on a small population): every listing is
a Query (a page of the table or an index) or a batch of item reads, never a Scan, and a page
of sites costs the same calls whatever the number of sites beyond it. Calls are counted by a
relay in front of moto (bench/awscalls.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from bench.awscalls import DynamoCalls
from pushsite.state.dynamodb import DynamoState


@pytest.fixture
def calls(moto: str) -> Iterator[DynamoCalls]:
    with DynamoCalls(moto) as counting:
        yield counting


def test_every_listing_is_queries_and_batch_reads_never_a_scan(
        moto: str, calls: DynamoCalls, dynamodb_url: str) -> None:
    # imported here, not at collection: the bench's modules bring bench.errors.BenchError, a
    # PushsiteError, and tests/test_api.py (collected after tests/aws/) parametrises over
    # every PushsiteError subclass it finds when it is collected
    from bench.state_scale_dynamo import generate, listings

    writer = DynamoState.from_url(dynamodb_url)
    generate(writer, sites=12, deployments=60)
    table = writer.table
    state = DynamoState.from_url(f"dynamodb://{table}?endpoint={calls.url}")
    for name, call in listings(state, random.Random(3)).items():
        calls.reset()
        call()
        made = calls.count()
        assert calls.count("Scan") == 0, name
        assert made == calls.count("Query") + calls.count("GetItem") + calls.count(
            "BatchGetItem"), name
    calls.reset()
    page = state.list_sites(after="site-00003", limit=5)
    assert [s.name for s in page] == [f"site-{n:05d}" for n in range(4, 9)]
    assert calls.count("Query") == 1 + len(page)  # the page, and each site's domain claims
    calls.reset()
    heads = state.site_heads([s.name for s in page])
    assert calls.count("BatchGetItem") <= 2 and calls.count("Query") == len(page)
    assert all(head.newest is not None for head in heads.values())
