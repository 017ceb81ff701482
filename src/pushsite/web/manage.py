"""The dashboard's management pages and actions (admin tokens): sites created and deleted,
tokens listed, created (the secret shown once) and revoked, a site's webhook secret rotated,
its build variables and secrets set and removed (a secret's value is never shown again), what
a failed push does chosen, production locked, rolled back.

Every action is a POSTed form with the session's CSRF value (Dashboard.checked_form), and each
one calls one Service verb. A token limited to one site manages that site and its own tokens
only, and never sees a webhook secret: rotating one needs an admin token for every site.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pushsite import names
from pushsite.errors import ConfigError, Forbidden, PushsiteError
from pushsite.model import Token
from pushsite.state import every_site

if TYPE_CHECKING:
    from pushsite.web.dashboard import Dashboard, Visit


def routes(board: Dashboard) -> list[Route]:
    manage = Manage(board)
    return [
        Route("/tokens", board.endpoint(manage.tokens_page)),
        Route("/tokens", manage.action(manage.create_token), methods=["POST"]),
        Route("/tokens/{token_id}/revoke", manage.action(manage.revoke_token),
              methods=["POST"]),
        Route("/sites", manage.action(manage.create_site), methods=["POST"]),
        Route("/sites/{site}/delete", manage.action(manage.delete_site), methods=["POST"]),
        Route("/sites/{site}/webhook-secret", manage.action(manage.rotate_secret),
              methods=["POST"]),
        Route("/sites/{site}/lock", manage.action(manage.lock), methods=["POST"]),
        Route("/sites/{site}/variables", manage.action(manage.set_variable), methods=["POST"]),
        Route("/sites/{site}/variables/{name}/unset", manage.action(manage.unset_variable),
              methods=["POST"]),
        Route("/sites/{site}/failed-pushes", manage.action(manage.failed_pushes),
              methods=["POST"]),
        Route("/sites/{site}/rollback", manage.action(manage.rollback), methods=["POST"]),
    ]


def is_admin(token: Token | None, site: str | None = None) -> bool:
    """An admin token for `site` (None: for every site)."""
    if token is None or "admin" not in token.scopes:
        return False
    return token.site is None or (site is not None and token.site == site)


class Manage:
    def __init__(self, board: Dashboard) -> None:
        self.board = board
        self.service = board.service

    def action(self, do: Callable[[Visit, dict[str, str], dict[str, Any]], Response | Any]
               ) -> Callable[[Request], Awaitable[Response]]:
        """A POST endpoint: signed in, the CSRF value checked, then `do` in a thread; a
        PushsiteError becomes the error page."""

        async def handle(request: Request) -> Response:
            visit = await self.board.visit(request)
            if visit.token is None:
                return self.board.to_login(visit)
            form = await self.board.checked_form(visit)
            if isinstance(form, Response):
                return form
            try:
                result = await run_in_threadpool(do, visit, form, dict(request.path_params))
            except PushsiteError as exc:
                return self.board.error_page(visit, exc)
            if isinstance(result, Response):
                return self.board.finish(visit, result)
            return self.board.render(visit, result)

        return handle

    @staticmethod
    def _require(visit: Visit, site: str | None = None) -> Token:
        token = visit.token
        if not is_admin(token, site):
            what = f"site {site!r}" if site else "every site"
            raise Forbidden(f"this needs an admin token for {what}; sign in with one "
                            "(`pushsite tokens create --admin`)")
        assert token is not None
        return token

    # tokens ---------------------------------------------------------------------------------
    def tokens_page(self, visit: Visit, created: dict[str, str] | None = None) -> Any:
        from pushsite.web.dashboard import Page

        token = visit.token
        if token is None or "admin" not in token.scopes:
            raise Forbidden("managing tokens needs an admin token; sign in with one")
        rows = [t for t in self.service.state.list_tokens()
                if token.site is None or t.site == token.site]
        rows.sort(key=lambda t: t.created, reverse=True)
        sites = [s.name for s in every_site(self.service.state) if token.covers(s.name)]
        return Page("tokens.html", {"tokens": rows, "created": created, "sites": sites,
                                    "every_site": token.site is None})

    def create_token(self, visit: Visit, form: dict[str, str], _: dict[str, Any]) -> Any:
        site = form.get("site", "").strip() or None
        token = self._require(visit, site) if site else self._require(visit)
        name = form.get("name", "").strip()
        if not name:
            raise ConfigError("give the token a name (what uses it, e.g. ci)")
        if token.site is not None and site != token.site:
            raise Forbidden(f"your token may only make tokens for site {token.site!r}")
        scopes = ["deploy", "admin"] if form.get("admin") else ["deploy"]
        secret = self.service.create_token(name, names.check_site_name(site) if site else None,
                                           scopes)
        return self.tokens_page(visit, {"name": name, "secret": secret})

    def revoke_token(self, visit: Visit, form: dict[str, str], path: dict[str, Any]) -> Response:
        token = visit.token
        if token is None or "admin" not in token.scopes:
            raise Forbidden("revoking tokens needs an admin token; sign in with one")
        self.service.delete_token(path["token_id"], site=token.site)
        return RedirectResponse("/tokens", 303)

    # sites ----------------------------------------------------------------------------------
    def create_site(self, visit: Visit, form: dict[str, str], _: dict[str, Any]) -> Response:
        self._require(visit)
        name = form.get("name", "").strip()
        branch = form.get("production_branch", "").strip() or "main"
        site = self.service.create_site(name, branch)
        return RedirectResponse(f"/sites/{site.name}", 303)

    def delete_site(self, visit: Visit, form: dict[str, str], path: dict[str, Any]) -> Response:
        site = path["site"]
        self._require(visit, site)
        if form.get("confirm", "").strip() != site:
            raise ConfigError(f"type the site's name ({site}) to confirm its deletion; "
                              "nothing was deleted")
        self.service.delete_site(site)
        return RedirectResponse("/", 303)

    def rotate_secret(self, visit: Visit, form: dict[str, str], path: dict[str, Any]) -> Any:
        from pushsite.web.dashboard import Page

        self._require(visit)  # a webhook secret is for admins of every site only
        site = self.service.rotate_webhook_secret(path["site"])
        return Page("secret.html", {"site": site, "secret": site.webhook_secret})

    # build variables (the builds' environment), as `pushsite env` and the API's /env -----------
    def set_variable(self, visit: Visit, form: dict[str, str], path: dict[str, Any]
                     ) -> Response:
        site = path["site"]
        self._require(visit, site)
        self.service.set_variable(site, form.get("name", "").strip(), form.get("value", ""),
                                  secret=form.get("secret") == "1")
        return RedirectResponse(f"/sites/{site}#variables-h", 303)

    def unset_variable(self, visit: Visit, form: dict[str, str], path: dict[str, Any]
                       ) -> Response:
        site = path["site"]
        self._require(visit, site)
        self.service.unset_variable(site, path["name"])
        return RedirectResponse(f"/sites/{site}#variables-h", 303)

    def failed_pushes(self, visit: Visit, form: dict[str, str], path: dict[str, Any]
                      ) -> Response:
        """A git push whose deploy fails: refused (the branch stays), or its commits kept."""
        site = path["site"]
        self._require(visit, site)
        self.service.update_site(site, reject_failed_pushes=form.get("reject") == "1")
        return RedirectResponse(f"/sites/{site}#admin-h", 303)

    def lock(self, visit: Visit, form: dict[str, str], path: dict[str, Any]) -> Response:
        site = path["site"]
        self.board.allowed(visit, site)
        self.service.lock(site, form.get("locked") == "1")
        return RedirectResponse(f"/sites/{site}", 303)

    def rollback(self, visit: Visit, form: dict[str, str], path: dict[str, Any]) -> Response:
        site = path["site"]
        self.board.allowed(visit, site)
        target = self.service.rollback(site)
        if form.get("lock"):
            self.service.lock(site)
        return RedirectResponse(f"/deployments/{target.id}", 303)
