"""The dashboard's notification pages: a site's endpoints and each one's delivery log.

    /sites/<site>/notifications                      the endpoints; add one (its secret shown
                                                     once), remove one (the browser asks first)
    /sites/<site>/notifications/<id>                 the delivery log: outcome, attempt, the
                                                     receiver's status, latency, error
    /sites/<site>/notifications/<id>/enable          a disabled endpoint told again
    /sites/<site>/notifications/<id>/resend          a given-up message sent again

Looking needs a token that covers the site; adding, removing and enabling need an admin token
for it, as in the API (web/api.py). Each action is a POSTed form with the session's CSRF value
(manage.Manage.action) and calls one Service verb.

"Send again" is offered on given-up attempts only: a message still being retried is on the
queue already, and a given-up attempt is the one record that keeps its message (Delivery).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pushsite.errors import ConfigError, Forbidden
from pushsite.model import NOTIFY_EVENTS, NOTIFY_FORMATS, NotifyEndpoint
from pushsite.service.notify import find_endpoint
from pushsite.web.manage import Manage, is_admin

if TYPE_CHECKING:
    from pushsite.web.dashboard import Dashboard, Page, Visit

DELIVERIES_SHOWN = 100  # newest attempts on an endpoint's page


def routes(board: Dashboard) -> list[Route]:
    pages = NotifyPages(board)
    action = Manage(board).action
    base = "/sites/{site}/notifications"
    return [
        Route(base, board.endpoint(pages.endpoints_page)),
        Route(base, action(pages.add), methods=["POST"]),
        Route(base + "/{endpoint_id}", board.endpoint(pages.deliveries_page)),
        Route(base + "/{endpoint_id}/remove", action(pages.remove), methods=["POST"]),
        Route(base + "/{endpoint_id}/enable", action(pages.enable), methods=["POST"]),
        Route(base + "/{endpoint_id}/resend", action(pages.resend), methods=["POST"]),
    ]


class NotifyPages:
    def __init__(self, board: Dashboard) -> None:
        self.board = board
        self.service = board.service

    def _admin(self, visit: Visit, site: str) -> None:
        if not is_admin(visit.token, site):
            raise Forbidden(f"changing the notifications of site {site!r} needs an admin "
                            "token for it; sign in with one (`pushsite tokens create --admin`)")

    def endpoints_page(self, visit: Visit, site: str,
                       added: NotifyEndpoint | None = None) -> Page:
        from pushsite.web.dashboard import Page

        self.board.allowed(visit, site)
        endpoints = self.service.list_endpoints(site)
        rows = []
        for endpoint in endpoints:
            last = self.service.deliveries(site, endpoint.id, limit=1)
            rows.append({"e": endpoint, "last": last[0] if last else None})
        return Page("notifications.html", {
            "site": site, "rows": rows, "added": added, "events": NOTIFY_EVENTS,
            "formats": NOTIFY_FORMATS, "can_change": is_admin(visit.token, site)})

    def deliveries_page(self, visit: Visit, site: str, endpoint_id: str) -> Page:
        from pushsite.web.dashboard import Page

        self.board.allowed(visit, site)
        endpoint = self._endpoint(site, endpoint_id)
        return Page("endpoint.html", {
            "site": site, "e": endpoint, "shown": DELIVERIES_SHOWN,
            "deliveries": self.service.deliveries(site, endpoint.id, DELIVERIES_SHOWN),
            "resent": visit.request.query_params.get("resent", ""),
            "can_change": is_admin(visit.token, site)})

    def _endpoint(self, site: str, endpoint_id: str) -> NotifyEndpoint:
        return find_endpoint(self.service, self.service.site(site).name, endpoint_id)

    # actions --------------------------------------------------------------------------------
    def add(self, visit: Visit, form: dict[str, str], path: dict[str, Any]) -> Page:
        site = path["site"]
        self._admin(visit, site)
        events = [e for e in NOTIFY_EVENTS if form.get(f"event:{e}")]
        if not events:
            raise ConfigError("tick at least one event to send; nothing was added")
        endpoint = self.service.add_endpoint(site, form.get("url", ""), events,
                                             form.get("format", "standard"))
        return self.endpoints_page(visit, site, added=endpoint)

    def remove(self, visit: Visit, form: dict[str, str], path: dict[str, Any]) -> Response:
        site = path["site"]
        self._admin(visit, site)
        self.service.remove_endpoint(site, path["endpoint_id"])
        return RedirectResponse(f"/sites/{site}/notifications", 303)

    def enable(self, visit: Visit, form: dict[str, str], path: dict[str, Any]) -> Response:
        """Tell a disabled endpoint again: what `pushsite notify add` with its URL does."""
        site = path["site"]
        self._admin(visit, site)
        endpoint = self._endpoint(site, path["endpoint_id"])
        self.service.add_endpoint(site, endpoint.url, endpoint.events, endpoint.format)
        return RedirectResponse(f"/sites/{site}/notifications/{endpoint.id}", 303)

    def resend(self, visit: Visit, form: dict[str, str], path: dict[str, Any]) -> Response:
        site, endpoint_id = path["site"], path["endpoint_id"]
        self._admin(visit, site)
        queued = self.service.resend_delivery(site, endpoint_id, form.get("message", ""))
        return RedirectResponse(f"/sites/{site}/notifications/{endpoint_id}"
                                f"?resent={'1' if queued else 'already'}", 303)
