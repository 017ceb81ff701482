"""Choosing a backend by URL scheme, shared by stores, state and queues.

The backend module is imported only when its scheme is used, so boto3 loads only for
`s3://`, `dynamodb://` and `sqs://`; an unknown scheme is a ConfigError listing the known.
"""

from __future__ import annotations

import importlib
from typing import Any
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
