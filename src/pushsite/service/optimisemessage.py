"""The queued message that has a live deployment's brotli variants made: `{"optimise": id}`.

One form for both ends, in a module of its own so that neither end loads the other:
service/running.py sends it when a deployment goes live with variants pending (a deploy
must not load the optimiser and brotli before its live line, tests/test_import_weight.py),
and service/worker.py and service/queueing.py take it to service/optimising.py. A message
that names a deployment to run (`{"deployment": id}`) is never this one.
"""

from __future__ import annotations

from collections.abc import Mapping

KEY = "optimise"


def optimise_message(deployment_id: str) -> dict[str, str]:
    return {KEY: deployment_id}


def is_optimise_message(body: Mapping[str, object]) -> bool:
    return KEY in body and "deployment" not in body


def to_optimise(body: Mapping[str, object]) -> str:
    """The id of the deployment an optimise message names."""
    return str(body[KEY])
