"""recover() in two workers at once over DynamoDB (moto): each running deployment whose lease
ran out is taken over by exactly one of them, a live lease is left alone, and what each
worker reads is the deployments in flight, not the hundreds that ended beside them."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pushsite.config import load_config
from pushsite.ids import new_id
from pushsite.model import Deployment, Status
from pushsite.service import Service
from pushsite.state.dynamodb import DynamoState

FINISHED = (Status.LIVE, Status.READY, Status.FAILED, Status.CANCELLED)


def items_read(state: DynamoState) -> list[int]:
    """A running count of the items this client's Queries and BatchGetItems read."""
    count = [0]

    def seen(parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "Query":
            count[0] += parsed.get("ScannedCount", 0)
        elif model.name == "BatchGetItem":
            count[0] += sum(len(found) for found in parsed.get("Responses", {}).values())

    state._client.meta.events.register("after-call.dynamodb", seen)
    return count


def test_two_workers_recover_at_once_each_expired_lease_taken_once(
        dynamodb_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHSITE_STATE", dynamodb_url)
    workers = [Service(load_config()) for _ in range(2)]
    try:
        state = workers[0].state
        assert isinstance(state, DynamoState)
        base = time.time() - 50_000
        expired, alive = [], None
        for n in range(406):
            made = Deployment(new_id(base + n), "shop", "main", created=base + n,
                              status=FINISHED[n % 4])
            if n % 100 == 5 or n == 405:  # running; the last one's runner is alive
                made.status, made.started = Status.RUNNING, base + n
                made.runner = f"worker@10.0.0.{n % 250}:{n}:gone"
                made.lease_until = time.time() + (300 if n == 405 else -5)
            state.create_deployment(made)
            if made.status == Status.RUNNING:
                if n == 405:
                    alive = made.id
                else:
                    expired.append(made.id)
        counts = [items_read(w.state) for w in workers]  # type: ignore[arg-type]

        start = threading.Barrier(2)
        settled: list[list[str]] = [[], []]

        def recover(n: int) -> None:
            start.wait()
            settled[n] = workers[n].recover()

        threads = [threading.Thread(target=recover, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)

        assert sorted(settled[0] + settled[1]) == sorted(expired)  # each once, by one worker
        for deployment_id in expired:
            after = state.get_deployment(deployment_id)
            assert after.status == Status.FAILED and "taken over" in after.error
            notes = [line for line in state.get_logs(deployment_id)
                     if "taken over" in line.message]
            assert len(notes) == 1, notes
        assert state.get_deployment(alive).status == Status.RUNNING  # type: ignore[arg-type]
        # each worker read the 5 running (keys, items), the queued and receiving (none), and
        # what its take-overs read back; 406 deployments would be one full read of by_time
        assert all(count[0] <= 4 * 5 for count in counts), counts
    finally:
        for worker in workers:
            worker.close()
