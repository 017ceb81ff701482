"""Delivery logs do not grow forever: records past state.DELIVERY_DAYS go (DynamoDB's TTL,
SQLite's trim on append, and `pushsite prune`'s housekeeping for both), and each endpoint
keeps at most state.DELIVERIES_KEPT. Run on SQLite and on DynamoDB (moto's server)."""

from __future__ import annotations

import time

import pytest

from pushsite.config import load_config
from pushsite.model import Delivery
from pushsite.service import Service
from pushsite.service.housekeeping import prune_deliveries
from pushsite.state import DELIVERIES_KEPT, DELIVERY_RETENTION

DAY = 86400.0


@pytest.fixture(params=["sqlite", "dynamodb"])
def service(request: pytest.FixtureRequest) -> Service:
    settings = {} if request.param == "sqlite" else {
        "state": request.getfixturevalue("dynamodb_url")}
    found = Service(load_config(**settings))
    request.addfinalizer(found.close)
    return found


def attempt(endpoint_id: str, n: int, at: float) -> Delivery:
    return Delivery(endpoint_id, f"msg_{n}", "deployment.succeeded", 1, "delivered", 204,
                    time=at)


def test_prune_drops_a_quiet_endpoints_old_deliveries_and_leaves_the_recent_ones(
        service: Service) -> None:
    service.create_site("blog")
    service.create_site("docs")
    quiet = service.add_endpoint("blog", "https://quiet.example/hook")
    other = service.add_endpoint("docs", "https://other.example/hook")
    now = time.time()
    start = now - DELIVERY_RETENTION + 3600  # written a month ago less an hour
    for n in range(3):
        service.state.append_delivery(attempt(quiet.id, n, start + n))
        service.state.append_delivery(attempt(other.id, n, start + n))
    service.state.append_delivery(attempt(quiet.id, 3, now))
    assert len(service.deliveries("blog", quiet.id)) == 4  # still within their retention
    assert prune_deliveries(service, "blog", now=now) == 0
    # two days later, those of a month ago are past it
    later = now + 2 * DAY
    assert prune_deliveries(service, "blog", now=later) == 3
    assert prune_deliveries(service, "blog", now=later) == 0
    assert [d.message_id for d in service.deliveries("blog", quiet.id)] == ["msg_3"]
    assert len(service.deliveries("docs", other.id)) == 3  # one site's prune, its own log
    assert prune_deliveries(service, "docs", now=later) == 3
    assert service.deliveries("docs", other.id) == []


def test_prune_of_a_site_reports_its_deliveries_and_an_endpoint_keeps_its_newest(
        service: Service) -> None:
    service.create_site("blog")
    chatty = service.add_endpoint("blog", "https://chatty.example/hook")
    quiet = service.add_endpoint("blog", "https://quiet.example/hook")
    now = time.time()
    for n in range(DELIVERIES_KEPT + 5):
        service.state.append_delivery(attempt(chatty.id, n, now - 1000 + n))
    service.state.append_delivery(attempt(quiet.id, 0, now - 500))
    trimmed = service.prune("blog", keep=1)["deliveries"]
    assert trimmed in (0, 5)  # SQLite keeps the bound on every append already
    newest = service.deliveries("blog", chatty.id, limit=DELIVERIES_KEPT + 10)
    assert len(newest) == DELIVERIES_KEPT
    assert newest[0].message_id == f"msg_{DELIVERIES_KEPT + 4}"
    assert newest[-1].message_id == "msg_5"
    # the chatty endpoint's bound took nothing of the quiet one's log
    assert [d.message_id for d in service.deliveries("blog", quiet.id)] == ["msg_0"]


def test_two_prunes_at_once_leave_the_same_log_as_one(service: Service) -> None:
    """Two `pushsite prune`s (or a prune beside a delivery) on one state: neither fails, and
    the log ends as one prune leaves it."""
    from concurrent.futures import ThreadPoolExecutor

    service.create_site("blog")
    endpoint = service.add_endpoint("blog", "https://both.example/hook")
    now = time.time()
    for n in range(40):  # 30 of them a month old
        at = now - DELIVERY_RETENTION + 3600 + n if n < 30 else now - 40 + n
        service.state.append_delivery(attempt(endpoint.id, n, at))
    later = now + 2 * DAY
    other = Service(service.config)  # its own connection to the same state, as a process has
    try:
        with ThreadPoolExecutor(3) as pool:
            prunes = [pool.submit(prune_deliveries, each, "blog", now=later)
                      for each in (service, other)]
            pool.submit(other.state.append_delivery, attempt(endpoint.id, 99, now)).result()
            gone = [p.result() for p in prunes]
    finally:
        other.close()
    assert 30 <= sum(gone) <= 60  # each deleted some; DynamoDB's deletes may overlap
    kept = [d.message_id for d in service.deliveries("blog", endpoint.id, limit=100)]
    assert sorted(kept) == sorted([f"msg_{n}" for n in range(30, 40)] + ["msg_99"])
