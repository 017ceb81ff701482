"""Webhooks from git hosts: `POST /hooks/<provider>/<site>` queues a fetch-and-deploy.

The host gets its answer as soon as the deployment is queued (well within a second); the
worker fetches the commit's archive into staging and deploys it. A site's webhook settings
(`pushsite hooks SITE --base-url ... --access-token ...`) say where its archives come from.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from pushsite.errors import SiteNotFound
from pushsite.service import Service
from pushsite.sources.webhooks import PushEvent, webhook_endpoint


def routes(service: Service) -> list[Any]:
    def get_secret(site: str) -> str | None:
        try:
            return service.state.get_site(site).webhook_secret or None
        except SiteNotFound:
            return None
        except Exception:  # noqa: BLE001 - a bad name is an unknown site here
            return None

    def deploy_tags(site: str) -> bool:
        return bool(service.state.get_site(site).settings.get("tags", False))

    async def on_push(site: str, event: PushEvent) -> dict[str, Any]:
        if event.deleted:
            if event.branch:
                await run_in_threadpool(service.delete_branch, site, event.branch)
            return {"deleted": True}
        branch = event.branch or f"tag/{event.tag}"
        deployment = await run_in_threadpool(
            service.accept_fetch, site, branch, event.provider, event.repo, event.commit,
            event.message, event.project_id)
        return {"deployment": deployment.id, "status": str(deployment.status)}

    endpoint = webhook_endpoint(get_secret, on_push, remember=service.state.remember,
                                deploy_tags=deploy_tags)
    return [Route("/hooks/{provider}/{site}", endpoint, methods=["POST"])]
