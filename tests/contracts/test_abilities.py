"""Which backend has which optional ability: the abilities are Protocols the callers check
with isinstance, so a backend that loses a method (a rename) shows up here, not as a deploy
that silently takes the slow path."""

from __future__ import annotations

import pytest

from pushsite.backends import Detachable
from pushsite.queues.local import LocalQueue
from pushsite.queues.sqs import SqsQueue
from pushsite.state import OwnWrites, Watchable
from pushsite.state.dynamodb import DynamoState
from pushsite.state.sqlite import SqliteState
from pushsite.stores import PackingStore, SizedStore, SpoolingStore
from pushsite.stores.local import LocalStore
from pushsite.stores.s3 import S3Store

ABILITIES = (PackingStore, SizedStore, SpoolingStore, Detachable, Watchable, OwnWrites)
BACKENDS: dict[type, set[type]] = {
    LocalStore: {SizedStore, SpoolingStore, Detachable},
    S3Store: {PackingStore, SizedStore},
    SqliteState: {Watchable},
    DynamoState: {OwnWrites},
    LocalQueue: set(),
    SqsQueue: set(),
}


@pytest.mark.parametrize("backend", list(BACKENDS), ids=lambda cls: cls.__name__)
def test_each_backend_has_exactly_its_declared_abilities(backend: type) -> None:
    has = {ability for ability in ABILITIES if issubclass(backend, ability)}
    assert has == BACKENDS[backend]
