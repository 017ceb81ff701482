"""An HTTP client for a `pushsite serve`'s /api, with a token."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.servers import Server


@dataclass
class Api:
    """An HTTP client for the server's /api with a token."""

    server: Server
    token: str

    def call(self, method: str, path: str, token: str | None = None,
             **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        secret = self.token if token is None else token
        if secret:
            headers.setdefault("Authorization", f"Bearer {secret}")
        return httpx.request(method, f"{self.server.url}/api{path}", headers=headers,
                             timeout=30, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    def upload(self, bundle: Path | bytes, site: str, **params: str) -> dict[str, Any]:
        """POST a bundle; the site is created if missing (`create=true`) unless the test
        passes create="false" (sites are created on purpose: the API's own flag)."""
        params.setdefault("create", "true")
        body = bundle if isinstance(bundle, bytes) else bundle.read_bytes()
        data: dict[str, Any] = self.ok("POST", f"/sites/{site}/deploys", 202, content=body,
                                       params=params,
                                       headers={"Content-Type": "application/gzip"})
        return data

    def finished(self, deployment_id: str) -> dict[str, Any]:
        """Poll until the deployment has ended (bounded in count, not in time)."""
        data: dict[str, Any] = {}
        for _ in range(600):
            data = self.ok("GET", f"/deployments/{deployment_id}")
            if data["exit_code"] is not None:
                return data
            time.sleep(0.05)
        raise AssertionError(f"deployment {deployment_id} never finished: {data}")

    def deploy(self, bundle: Path | bytes, site: str, **params: str) -> dict[str, Any]:
        return self.finished(self.upload(bundle, site, **params)["id"])
