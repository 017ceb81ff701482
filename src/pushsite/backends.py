"""Choosing a backend by URL scheme, shared by stores, state and queues.

The backend module is imported only when its scheme is used, so boto3 loads only for
`s3://`, `dynamodb://` and `sqs://`; an unknown scheme is a ConfigError listing the known.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pushsite.errors import ConfigError


def open_backend(url: str, backends: dict[str, str], kind: str) -> Any:
    """Instantiate `backends[scheme]` ("module:Class") with its `from_url(url)`."""
    scheme = urlsplit(url).scheme
    if scheme not in backends:
        known = ", ".join(f"{s}://" for s in backends)
        raise ConfigError(f"unknown {kind} URL {url!r}: expected one of {known}")
    module_name, class_name = backends[scheme].split(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    return backend.from_url(url)


@runtime_checkable
class Detachable(Protocol):
    """A backend (store, state or queue) that a process about to end without teardown
    (`os._exit`) only flushes, leaving the costly part of close to the exit (stores/local.py:
    closing the last connection would checkpoint the WAL, ~50 ms of a one-shot deploy)."""

    def detach(self) -> None:
        """Make what is pending durable; the process ends next."""
