"""The service: accept a bundle, queue it, run it, activate, roll back, prune, verify.

Every entry point (the CLI, the git remote, webhooks, the API, a Lambda handler) goes through
here, so a push and `pushsite deploy` take the same path: staging, a queued deployment, the
deployer, then one compare-and-set alias move.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pushsite import ids, names
from pushsite.diskspace import settling, translating
from pushsite.errors import (
    AliasConflict,
    ConfigError,
    DeploymentCancelled,
    DeploymentFailed,
    DeploymentNotFound,
    NotFound,
    SiteNotFound,
)
from pushsite.model import (
    ADMIN_SCOPE,
    MAX_VARIABLES,
    PRODUCTION,
    Deployment,
    DomainStatus,
    Site,
    Status,
    Variable,
    branch_alias,
    check_variable_name,
    check_variable_value,
    manifest_key,
    pending_key,
)
from pushsite.pathindex import index_key
from pushsite.service.base import DEFAULT_TIMEOUT
from pushsite.service.queueing import Queueing
from pushsite.service.running import deadline_margin
from pushsite.state import every_site

# domains, housekeeping, tokens, the webhook checks, git (subprocess) and the site
# repositories are imported by the verbs that use them: a one-shot `pushsite deploy` uses none
# (tests/test_import_weight.py)

if TYPE_CHECKING:
    from _typeshed import SupportsRead

    from pushsite.records import Delivery, Domain, HostedRepo, NotifyEndpoint, RefOutcome, Token

__all__ = ["DEFAULT_TIMEOUT", "Service", "deadline_margin"]

_logger = logging.getLogger("pushsite.webhooks")
_COPY_CHUNK = 1 << 20
_PAGE = 500  # deployments per state query when a verb must see all of a site's
ZERO = "0" * 40  # a ref's old or new id when it is created or deleted


def _is_zero(oid: str) -> bool:
    """A ref's missing side: git's all-zero id ("" is an id a host left out)."""
    return bool(oid) and oid.strip("0") == ""


def _peeled(repo: Path, oid: str) -> str:
    """An annotated tag names a tag object; the commit it points at is what deploys."""
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{oid}^{{commit}}"],
                          capture_output=True, text=True, cwd=repo, check=False)
    return done.stdout.strip() or oid


AMBIGUOUS_SHOWN = 5  # candidates an ambiguous prefix's error lists


def _common_length(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def missing_site(name: str, known: list[str]) -> str:
    """The message for a deploy to a site that does not exist, with the likeliest typo."""
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    meant = f"; did you mean {close[0]!r}?" if close else ";"
    return f"no site named {name!r}{meant} create it with: pushsite sites create {name}"


class Service(Queueing):
    """The product's verbs, over whichever backends the Config names."""


    # backends, opened on first use ------------------------------------------------------




    # sites ---------------------------------------------------------------------------------
    def site(self, name: str, create: bool = False) -> Site:
        names.check_site_name(name)
        try:
            return self.state.get_site(name)
        except SiteNotFound:
            if not create:
                known = [s.name for s in every_site(self.state)]
                raise SiteNotFound(missing_site(name, known)) from None
        site = Site(name, webhook_secret=secrets.token_hex(20))
        self.state.put_site(site)
        return site

    def deploy_target(self, name: str, create: bool = False) -> Site:
        """The site a deploy or a push goes to. Sites are created on purpose: an unknown name
        is a SiteNotFound that suggests the close name meant (a typo must never make a site
        and report it live) unless `create` asks for a new site."""
        if not create:
            return self.site(name)
        try:  # no typo hint to make (it lists every site): a missing site is made here
            return self.state.get_site(names.check_site_name(name))
        except SiteNotFound:
            return self.create_site(name)

    # custom domains (service/domains.py) ---------------------------------------------------
    def add_domain(self, site_name: str, host: str, *, approve: bool = True) -> Domain:
        """An admin's claim of `host` for a site, approved at once (or, with approve=False,
        pending until approved or proven in DNS). Names the edge or the control plane answer
        on are refused (DomainConflict), as is a host another site holds, even pending."""
        from pushsite.service import domains as claims

        site = self.site(site_name)
        host = claims.claimable(host, self.config)
        status = DomainStatus.APPROVED if approve else DomainStatus.PENDING
        return self.state.claim_domain(host, site.name, status=status, scope=ADMIN_SCOPE)

    def approve_domain(self, site_name: str, host: str) -> Domain:
        """An admin's approval of a site's claim (made in pushsite.toml, say): served now."""
        site = self.site(site_name)
        host = names.check_host(host)
        if not self.state.approve_domain(host, site.name):
            raise NotFound(f"site {site.name} holds no claim on {host}; "
                           f"`pushsite domains list {site.name}` shows its claims")
        return self._claim(host)

    def verify_domain(self, site_name: str, host: str, *, scope: str = ADMIN_SCOPE) -> Domain:
        """Approve a site's claim of `host` (claiming it first when free) if DNS proves its
        owner controls the name: a TXT record `_pushsite-challenge.<host>` holds the site's
        domain token. Raises ConfigError, with the record to add, when it does not."""
        from pushsite.service import domains as claims

        site = self.site(site_name)
        host = claims.claimable(host, self.config)
        claim = self.state.claim_domain(host, site.name, scope=scope)
        if claim.approved:
            return claim
        token = claims.domain_token(self.state, site)
        name = claims.challenge_name(host)
        found = claims.txt_records(name, self.config.dns)
        if token not in found:
            seen = ", ".join(repr(text) for text in found) or "no TXT record"
            raise ConfigError(f"{host} is not proven: DNS has {seen} at {name}; add a TXT "
                              f"record {name} = \"{token}\" and try again (a change can take "
                              "minutes to show in DNS)")
        self.state.approve_domain(host, site.name)
        return self._claim(host)

    def remove_domain(self, site_name: str, host: str) -> Site:
        site = self.site(site_name)
        self.state.release_domain(names.check_host(host), site.name)
        return self.state.get_site(site.name)

    def domains(self, site_name: str) -> list[Domain]:
        """A site's claims with their status."""
        return self.state.list_domains(self.site(site_name).name)

    def domain_token(self, site_name: str) -> str:
        """The value the site's `_pushsite-challenge.<host>` TXT records must hold."""
        from pushsite.service import domains as claims

        return claims.domain_token(self.state, self.site(site_name))

    def _claim(self, host: str) -> Domain:
        claim = self.state.get_domain(host)
        if claim is None:
            raise NotFound(f"the claim on {host} was released meanwhile")
        return claim

    def create_site(self, name: str, production_branch: str = "main") -> Site:
        """A new site, on purpose (a deploy to an unknown name creates one too)."""
        names.check_site_name(name)
        names.check_branch_name(production_branch)
        try:
            self.state.get_site(name)
        except SiteNotFound:
            pass
        else:
            raise ConfigError(f"site {name!r} already exists; change its settings instead")
        site = Site(name, production_branch, webhook_secret=secrets.token_hex(20))
        self.state.put_site(site)
        return site

    def update_site(self, name: str, *, production_branch: str | None = None,
                    tags: bool | None = None, webhook_base_url: str | None = None,
                    webhook_access_token: str | None = None,
                    webhook_repo: str | None = None,
                    reject_failed_pushes: bool | None = None) -> Site:
        """Change a site's record and settings; a value left as None stays as it is.
        `webhook_repo` binds the site to one repository ("owner/name"; "" unbinds it: the
        next valid push binds it again)."""
        site = self.site(name)
        if production_branch is not None:
            site.production_branch = names.check_branch_name(production_branch)
        hook = site.settings.webhook
        if webhook_base_url is not None:
            hook = replace(hook, base_url=webhook_base_url.strip())
        if webhook_access_token is not None:
            hook = replace(hook, access_token=webhook_access_token)
        if webhook_repo is not None:
            from pushsite.sources.webhooks import check_repo_name

            hook = replace(hook, repo=check_repo_name(webhook_repo) if webhook_repo else "",
                           last_ignored_repo="")
        site.settings = replace(site.settings, webhook=hook,
                                tags=site.settings.tags if tags is None else tags)
        if reject_failed_pushes is not None:
            site.settings = replace(site.settings, reject_failed_pushes=reject_failed_pushes)
        self.state.put_site(site)
        return site

    def lock(self, name: str, locked: bool = True) -> Site:
        """Lock production (Netlify's "stop auto publishing"): deployments of the production
        branch become ready without going live, until `lock(name, False)`; a promote or a
        rollback still moves production."""
        site = self.site(name)
        site.settings = replace(site.settings, locked=locked)
        self.state.put_site(site)
        return site

    def rotate_webhook_secret(self, name: str) -> Site:
        """A new webhook secret: the old one stops verifying pushes at once."""
        site = self.site(name)
        site.webhook_secret = secrets.token_hex(20)
        self.state.put_site(site)
        return site

    # build variables ---------------------------------------------------------------------------
    def variables(self, name: str) -> list[dict[str, Any]]:
        """The site's build variables as shown: a secret's value as HIDDEN, never itself."""
        return [v.shown() for v in self.site(name).settings.variables]

    def set_variable(self, name: str, key: str, value: str, *, secret: bool = False) -> dict[
            str, Any]:
        """Set a variable the site's builds see (replacing one of that name)."""
        site = self.site(name)
        variable = Variable(check_variable_name(key), check_variable_value(key, value), secret)
        kept = tuple(v for v in site.settings.variables if v.name != key)
        if len(kept) >= MAX_VARIABLES:
            raise ConfigError(f"site {name!r} has {MAX_VARIABLES} variables already; unset one")
        site.settings = replace(site.settings, variables=(*kept, variable))
        self.state.put_site(site)
        return variable.shown()

    def clear_build_cache(self, name: str) -> int:
        """Drop the site's build caches on this machine; how many branches' there were."""
        from pushsite.service.building import site_cache

        return site_cache(self, self.site(name).name).clear()

    def unset_variable(self, name: str, key: str) -> None:
        site = self.site(name)
        kept = tuple(v for v in site.settings.variables if v.name != key)
        if len(kept) == len(site.settings.variables):
            raise NotFound(f"site {name!r} has no variable {key!r}")
        site.settings = replace(site.settings, variables=kept)
        self.state.put_site(site)

    def delete_site(self, name: str) -> None:
        """Delete a site: its record and settings, domains, aliases, deployments and logs,
        their manifests, and its git repository. Its blobs go at the next prune (other sites
        may share them). A site with a queued or running deployment is kept."""
        site = self.site(name)
        for status in (Status.RECEIVING, Status.QUEUED, Status.RUNNING):
            busy = self.state.list_deployments(site.name, status=status, limit=1)
            if busy:
                raise ConfigError(f"deployment {busy[0].id} of site {site.name} is {status}; "
                                  "cancel it or wait for it, then delete the site")
        doomed = [key for d in self._every_deployment(site.name)
                  for key in (manifest_key(d.id), index_key(d.id), pending_key(d.id))]
        self.state.delete_site(site.name)  # first: the edge stops serving it at once
        self.store.delete(doomed)
        from pushsite.deploy.gitcommit import SiteRepos

        shutil.rmtree(SiteRepos(self.config.repos).path(site.name), ignore_errors=True)

    def _every_deployment(self, site_name: str) -> list[Deployment]:
        """All of a site's deployments, page by page (no cap on how many)."""
        found: list[Deployment] = []
        before = None
        while True:
            page = self.state.list_deployments(site_name, limit=_PAGE, before=before)
            found += page
            if len(page) < _PAGE:
                return found
            before = page[-1].id

    # accepting -------------------------------------------------------------------------------
    def accept(
        self,
        site_name: str,
        bundle: BinaryIO | None,
        *,
        branch: str | None = None,
        message: str = "",
        commit: str = "",
        source: str = "cli",
        enqueue: bool = True,
        deployment_id: str | None = None,
        bundle_key: str = "",
        draft: bool = False,
        receiving: bool = False,
    ) -> Deployment:
        """Stage a bundle and record a queued deployment; the bundle is copied as a stream.
        A `draft` moves no alias when it is ready (running.activate). With `receiving` (an
        upload), it is recorded `receiving` before the first byte is copied (receiving.py).

        With bundle None the caller streams it into `run` itself (`pushsite deploy` reads
        its source once, straight through the deployer, instead of copying it first), or
        names where it already waits (`bundle_key` s3://..., with an id derived from it).
        """
        site = self.site(site_name, create=True)
        branch = names.check_branch_name(branch or site.production_branch)
        self._check_branch_label(site.name, branch)
        deployment = Deployment(deployment_id or ids.new_id(), site.name, branch, Status.QUEUED,
                                commit=commit, message=message, source=source,
                                bundle_key=bundle_key, draft=draft)
        if bundle is not None and receiving:
            self._receive(deployment, bundle)
        elif bundle is not None:
            deployment.bundle_key = self._stage(deployment.id, bundle)
            self.state.create_deployment(deployment)
        else:
            self.state.create_deployment(deployment)
        self._note(deployment, "info", "accept",
                   f"accepted a bundle for {site.name} ({branch}) from {source}",
                   bytes=self._staged_size(deployment.bundle_key))
        self._announce(deployment)
        if enqueue:
            self.queue.send({"deployment": deployment.id})
        return deployment

    def _receive(self, deployment: Deployment, bundle: BinaryIO) -> None:
        """Record the deployment `receiving`, stage the upload counting its bytes into the
        record, then make it `queued`; a broken upload fails it (service/receiving.py)."""
        from pushsite.service.receiving import Received

        deployment.status = Status.RECEIVING
        deployment.lease_until = time.time() + self.lease
        self.state.create_deployment(deployment)
        counted = Received(bundle, self.state, deployment, self.lease,
                           idle=self.config.upload_idle)
        try:
            deployment.bundle_key = self._stage(deployment.id, counted)
        except BaseException as exc:
            counted.close()  # no more renewals, even when the write below cannot be made
            deployment.status, deployment.finished = Status.FAILED, time.time()
            deployment.error = f"the upload did not arrive whole: {exc}"
            deployment.error_kind = type(exc).__name__
            self.state.update_deployment(deployment, expect_status=Status.RECEIVING)
            raise
        deployment.status, deployment.lease_until = Status.QUEUED, 0.0
        deployment.bytes_in, deployment.progress = 0, ""
        if not self.state.update_deployment(deployment, expect_status=Status.RECEIVING):
            self._discard_staged(deployment)
            raise DeploymentFailed(f"deployment {deployment.id} was failed while its upload "
                                   "arrived (it stopped renewing its lease); deploy it again")

    # incremental uploads (service/uploads.py) -------------------------------------------------
    def upload_basis(self, site_name: str, *, branch: str | None = None,
                     create: bool = False) -> dict[str, bool]:
        """Whether an upload to the site could reuse blobs the server holds (uploads.basis)."""
        from pushsite.service import uploads

        return uploads.basis(self, site_name, branch=branch, create=create)

    def start_upload(self, site_name: str, files: Any, *, branch: str | None = None,
                     message: str = "", strip_top: bool = False,
                     create: bool = False) -> tuple[str, list[str]]:
        """Keep a checked file list; returns (upload id, the sha256s the server lacks)."""
        from pushsite.service import uploads

        return uploads.start(self, site_name, files, branch=branch, message=message,
                             strip_top=strip_top, create=create)

    def receive_blobs(self, site_name: str, upload_id: str, body: BinaryIO) -> int:
        """Store a batch of asked-for blobs; a lie discards the upload (BundleRejected)."""
        from pushsite.service import uploads

        return uploads.receive(self, site_name, upload_id, body)

    def finish_upload(self, site_name: str, upload_id: str, *,
                      run_now: bool = False) -> Deployment:
        """Queue the upload's deployment once every asked-for blob has come (and, with
        `run_now`, run a small one at once: uploads.finish)."""
        from pushsite.service import uploads

        return uploads.finish(self, site_name, upload_id, run_now=run_now)

    def _stage(self, deployment_id: str, bundle: SupportsRead[bytes]) -> str:
        self.config.staging.mkdir(parents=True, exist_ok=True)
        target = self.config.staging / f"{deployment_id}.tar.gz"
        partial = target.with_suffix(".part")
        try:
            with translating(self.config.staging), open(partial, "wb") as out:
                shutil.copyfileobj(bundle, out, _COPY_CHUNK)
        except BaseException:
            partial.unlink(missing_ok=True)  # a cut-off upload leaves nothing behind
            raise
        partial.rename(target)
        return target.name



    def _check_branch_label(self, site: str, branch: str) -> None:
        label = names.branch_label(branch)
        for alias in self.state.list_aliases(site):
            if not alias.name.startswith("branch/"):
                continue
            other = alias.name.removeprefix("branch/")
            if other != branch and names.branch_label(other) == label:
                raise ConfigError(
                    f"branch {branch!r} would share the preview host {label}--{site} with "
                    f"branch {other!r}; rename one of them (or delete {other!r})"
                )

    # running -----------------------------------------------------------------------------------




    def accept_commit(self, site_name: str, branch: str, commit: str, message: str = "",
                      source: str = "git", enqueue: bool = True) -> Deployment:
        """Queue a deployment of a commit already in the site's repository (a push)."""
        site = self.site(site_name, create=True)
        names.check_branch_name(branch)
        self._check_branch_label(site.name, branch)
        deployment = Deployment(ids.new_id(), site.name, branch, Status.QUEUED, commit=commit,
                                message=message, source=source, bundle_key=f"git:{commit}")
        self.state.create_deployment(deployment)
        self._note(deployment, "info", "accept", f"push of {commit[:12]} to {branch} queued")
        self._announce(deployment)
        if enqueue:  # else the caller runs it (a push waiting in its proc-receive hook)
            self.queue.send({"deployment": deployment.id})
        return deployment

    def accept_fetch(self, site_name: str, branch: str, provider: str, repo: str, commit: str,
                     message: str = "", project_id: str = "") -> Deployment:
        """Queue a deployment whose bundle a worker fetches from a git host (a webhook)."""
        site = self.site(site_name)
        names.check_branch_name(branch)
        self._check_branch_label(site.name, branch)
        deployment = Deployment(ids.new_id(), site.name, branch, Status.QUEUED, commit=commit,
                                message=message, source=f"webhook:{provider}")
        self.state.create_deployment(deployment)
        self._note(deployment, "info", "accept",
                   f"{provider} push of {commit[:12]} to {branch} queued")
        self._announce(deployment)  # first: the pending status goes before the deploy ends
        self.queue.send({"deployment": deployment.id, "fetch": {
            "provider": provider, "repo": repo, "commit": commit, "project_id": project_id}})
        return deployment













    def deploy_ref(self, site_name: str, ref: str, old: str, new: str, *, message: str = "",
                   hosted: HostedRepo | None = None, enqueue: bool = True) -> RefOutcome:
        """Decide what one pushed ref update does, do it, and say what it did.

        A branch push queues a deployment of its commit; a deleted branch loses its preview
        (never production). A tag does the same as the branch `tag/<name>`, only when the site
        deploys tags. Any other ref is ignored. The commit is in the site's own repository (a
        git push: an annotated tag is peeled to its commit), or, with `hosted`, on a git host
        whose archive a worker fetches (a webhook).
        """
        from pushsite.records import RefOutcome

        site = self.site(site_name, create=hosted is None)  # a push may create its site
        binding = site.settings.webhook.repo
        if hosted is not None:
            refused = self._bound(site, hosted.repo)
            if refused:
                return RefOutcome(ref, "ignore", reason=refused)
        if ref.startswith("refs/heads/"):
            branch = ref.removeprefix("refs/heads/")
        elif ref.startswith("refs/tags/") and site.settings.tags:
            branch = "tag/" + ref.removeprefix("refs/tags/")
        elif ref.startswith("refs/tags/"):
            return RefOutcome(ref, "ignore", reason="tag pushes are not deployed for this site "
                              "(they are with `tags = true` in pushsite.toml, or `pushsite "
                              "hooks --tags`)")
        else:
            return RefOutcome(ref, "ignore", reason="only branch and tag refs are deployed")
        if _is_zero(new):
            if _is_zero(old):  # created and deleted at once: a host's test delivery
                return RefOutcome(ref, "ignore", branch, reason="the ref did not change")
            self.delete_branch(site.name, branch)
            return RefOutcome(ref, "remove", branch)
        if hosted is not None:
            deployment = self.accept_fetch(site.name, branch, hosted.provider, hosted.repo, new,
                                           message, hosted.project_id)
            if not binding:
                self._note(deployment, "info", "accept",
                           f"site {site.name} is now bound to repository {hosted.repo}: pushes "
                           "from any other repository are ignored")
            return RefOutcome(ref, "deploy", branch, deployment)
        from pushsite.deploy.gitcommit import SiteRepos

        repos = SiteRepos(self.config.repos)
        commit = _peeled(repos.path(site.name), new) if branch.startswith("tag/") else new
        deployment = self.accept_commit(site.name, branch, commit,
                                        message or repos.commit_message(site.name, commit),
                                        enqueue=enqueue)
        return RefOutcome(ref, "deploy", branch, deployment)

    def _bound(self, site: Site, repo: str) -> str:
        """Why a signed push from `repo` may not deploy `site` ("" when it may). The secret
        proves only who signed; the site deploys the one repository it is bound to, set by
        `pushsite hooks --repo` or else by its first valid push."""
        from pushsite.sources.webhooks import same_repo

        hook = site.settings.webhook
        if not hook.repo:
            site.settings = replace(site.settings, webhook=replace(hook, repo=repo))
            self.state.put_site(site)
            _logger.info("site %s is now bound to repository %s (its first valid webhook "
                         "push)", site.name, repo)
            return ""
        if same_repo(hook.repo, repo):
            return ""
        _logger.warning("ignored a signed push for repository %s: site %s deploys only %s",
                        repo, site.name, hook.repo)
        if hook.last_ignored_repo != repo:
            site.settings = replace(site.settings,
                                    webhook=replace(hook, last_ignored_repo=repo))
            self.state.put_site(site)
        return (f"the push is for repository {repo}, and site {site.name} deploys only "
                f"{hook.repo} (`pushsite hooks {site.name} --repo OWNER/NAME` rebinds it)")

    def redeploy(self, deployment_id: str) -> Deployment:
        """A new deployment with an earlier one's files, on its branch: no bundle is read and
        no blob written, only its manifest copied under a fresh id (so it wins the branch's
        aliases). Runs to its end here, recorded like any run; raises DeploymentFailed (or a
        subclass) when it fails."""
        original = self.state.get_deployment(deployment_id)
        if not original.status.servable:
            raise ConfigError(f"deployment {original.id} is {original.status} and has no "
                              "manifest to redeploy; deploy its files again instead")
        manifest = self.manifest(original.id)
        now = time.time()
        deployment = Deployment(
            ids.new_id(now), original.site, original.branch, Status.RUNNING,
            commit=original.commit, source="redeploy", created=now, started=now,
            message=f"redeploy of {original.id}" + (f": {original.message}"
                                                      if original.message else ""),
            files=len(manifest.files), bytes_in=sum(e.size for e in manifest.files.values()),
            blobs_reused=len({e.hash for e in manifest.files.values()}))
        copy = replace(manifest, deployment_id=deployment.id, created=now)
        self.state.create_deployment(deployment)
        self._note(deployment, "info", "accept", f"redeploying the {deployment.files} files "
                   f"of {original.id} to {deployment.branch}")
        # created running (it never waits in the queue): `started` is its first event, as a
        # push's run announces it; the outcome follows from run_manifest
        self._announce(deployment, "deployment.started")
        return self.run_manifest(deployment, copy)

    # aliases -----------------------------------------------------------------------------------

    def find_deployment(self, ref: str, site: str | None = None) -> Deployment:
        """The deployment `ref` names, as `log`, `rollback`, `promote` and `cancel` take it:
        a whole id, a site's name (its newest deployment), or a unique prefix of an id of at
        least MIN_PREFIX characters, as git takes a commit's (of `site`, when given)."""
        ref = ref.strip().lower()
        if ids.looks_like_id(ref):
            found = self.state.get_deployment(ref)
            if site is not None and found.site != site:
                raise DeploymentNotFound(f"deployment {ref} belongs to site {found.site!r}, "
                                         f"not {site!r}")
            return found
        if site is None and self._has_site(ref):
            newest = self.state.list_deployments(ref, limit=1)
            if not newest:
                raise DeploymentNotFound(f"site {ref} has no deployments yet")
            return newest[0]
        if not ids.could_prefix(ref):
            where = f" of site {site!r}" if site else ""
            raise DeploymentNotFound(f"no deployment{where} and no site named {ref!r}")
        if len(ref) < ids.MIN_PREFIX:
            raise ConfigError(f"{ref!r} is too short to name a deployment: give at least "
                              f"{ids.MIN_PREFIX} characters of its id")
        found_list = self.state.find_deployments(ref, site=site, limit=AMBIGUOUS_SHOWN + 1)
        if not found_list:
            where = f" of site {site!r}" if site else ""
            raise DeploymentNotFound(f"no deployment{where} whose id starts with {ref!r}")
        if len(found_list) > 1:
            listed = ", ".join(f"{d.id} ({d.site} {d.branch})"
                               for d in found_list[:AMBIGUOUS_SHOWN])
            more = " and more" if len(found_list) > AMBIGUOUS_SHOWN else ""
            raise ConfigError(f"{ref!r} names more than one deployment: {listed}{more}; "
                              "give more characters")
        return found_list[0]

    def short_ids(self, deployments: list[Deployment]) -> dict[str, str]:
        """Each deployment's shortest id prefix that names it alone among every site's
        deployments (find_deployment takes it back), at least SHORT_ID characters. Ids start
        with their time, so deployments made close together need a few more."""
        ordered = sorted(d.id for d in deployments)
        shown: dict[str, str] = {}
        for i, full in enumerate(ordered):
            length = ids.SHORT_ID
            for neighbour in ordered[max(i - 1, 0):i] + ordered[i + 1:i + 2]:
                length = max(length, _common_length(full, neighbour) + 1)
            while length < len(full):
                others = [d.id for d in self.state.find_deployments(full[:length], limit=2)
                          if d.id != full]
                if not others:
                    break
                length = max(length, _common_length(full, others[0]) + 1)
            shown[full] = full[:length]
        return shown

    def _has_site(self, name: str) -> bool:
        try:
            self.state.get_site(names.check_site_name(name))
        except (ConfigError, SiteNotFound):
            return False
        return True

    def promote(self, deployment_id: str) -> Deployment:
        """Point production at a ready deployment (a draft, a preview, a newer one): the
        dashboard's button and `pushsite promote`; its log says "promoted"."""
        target = self.state.get_deployment(deployment_id)
        return self.rollback(target.site, target.id, verb="promoted")

    def rollback(self, site_name: str, deployment_id: str | None = None, *,
                 verb: str = "rolled back") -> Deployment:
        """Point production at an earlier ready deployment: an alias move, no copying."""
        site = self.site(site_name)
        current = self.state.get_alias(site.name, PRODUCTION)
        if deployment_id is None:
            target = self._previous_production(site, current.deployment_id if current else None)
        else:
            target = self.state.get_deployment(deployment_id)
            if target.site != site.name:
                raise DeploymentNotFound(
                    f"deployment {deployment_id} belongs to site {target.site!r}, "
                    f"not {site.name!r}")
        if not target.status.servable:
            raise ConfigError(f"deployment {target.id} is {target.status}, not ready: only a "
                              "ready deployment can go live")
        from pushsite.service import housekeeping

        housekeeping.check_servable(self, target)  # before any alias moves
        # then live (a prune drops only ready ones, and a claim fails on one it dropped since
        # the check: service/running.py's claim_live), then the move; back to ready if refused
        if not self.claim_live(target):
            raise ConfigError(f"deployment {target.id} is no longer ready (pruned?): only a "
                              "ready deployment can go live")
        try:
            if not self.state.move_alias(site.name, PRODUCTION, target.id, ids.new_id()):
                raise AliasConflict(f"production of {site.name} moved while "
                                    f"{'promoting' if verb == 'promoted' else 'rolling back'}"
                                    "; retry")
        except BaseException:
            self._refresh_status(target.id)
            raise
        self._mark_live(target)
        if current and current.deployment_id != target.id:
            self._refresh_status(current.deployment_id)
        self._note(target, "info", "activate", f"{verb}: production now serves {target.id}")
        target = self.state.get_deployment(target.id)
        self._production_changed(target, current.deployment_id if current else None,
                                 "promote" if verb == "promoted" else "rollback")
        return target

    def _previous_production(self, site: Site, current: str | None) -> Deployment:
        for candidate in self.state.list_deployments(site.name, branch=site.production_branch,
                                                     limit=500):
            if candidate.id != current and candidate.status.servable and (
                current is None or candidate.id < current
            ):
                return candidate
        raise NotFound(f"site {site.name} has no earlier ready deployment to roll back to")



    def delete_branch(self, site_name: str, branch: str) -> None:
        """A deleted branch loses its preview (production is never removed this way)."""
        alias = self.state.get_alias(site_name, branch_alias(branch))
        self.state.delete_alias(site_name, branch_alias(branch))
        if alias:
            self._refresh_status(alias.deployment_id)

    def cancel(self, deployment_id: str) -> Deployment:
        """Cancel a queued or running deployment; works on a full disk (diskspace.py)."""
        with settling():
            return self._cancel(deployment_id)

    def _cancel(self, deployment_id: str) -> Deployment:
        deployment = self.state.get_deployment(deployment_id)
        for status in (Status.RECEIVING, Status.QUEUED, Status.RUNNING):
            deployment.status = Status.CANCELLED
            deployment.error = "cancelled"
            deployment.error_kind = DeploymentCancelled.__name__
            deployment.finished = time.time()
            if self.state.update_deployment(deployment, expect_status=status):
                if status in (Status.QUEUED, Status.RECEIVING):  # an upload's folder goes
                    self._discard_staged(deployment)
                self._note(deployment, "info", "cancelled", f"cancelled while {status}")
                self._count_outcome(deployment)
                self._announce(deployment)
                return deployment
        current = self.state.get_deployment(deployment_id)
        raise ConfigError(f"deployment {deployment_id} is {current.status}; only a queued or "
                          "running deployment can be cancelled")

    # the queue ----------------------------------------------------------------------------------




    # housekeeping -------------------------------------------------------------------------------

    def prune(self, site_name: str, keep: int, grace: float | None = None) -> dict[str, int]:
        """Delete old deployments and the blobs no kept deployment uses (housekeeping.py);
        `grace`: seconds of recent writes always kept (default: the prune_grace setting).
        Works on a full disk: its writes use the reserve's room (diskspace.py)."""
        from pushsite.service import housekeeping

        with settling():
            return housekeeping.prune(self, site_name, keep, grace=grace)

    def verify(self) -> list[str]:
        """The problems found in every ready manifest's blobs (housekeeping.py)."""
        from pushsite.service import housekeeping

        return housekeeping.verify(self)

    # tokens -------------------------------------------------------------------------------------
    def create_token(self, name: str, site: str | None = None,
                     scopes: list[str] | None = None) -> str:
        from pushsite.service import tokens

        return tokens.create_token(self.state, name, site, scopes)

    def check_token(self, secret: str, site: str | None = None,
                    scope: str = "deploy") -> Token:
        from pushsite.service import tokens

        return tokens.check_token(self.state, secret, site, scope)

    def delete_token(self, token_id: str, site: str | None = None) -> Token:
        """Revoke a token by id; with `site`, only a token limited to that site (what a site's
        admin may manage). It stops working at once."""
        for token in self.state.list_tokens():
            if token.id == token_id and (site is None or token.site == site):
                self.state.delete_token(token.id)
                return token
        raise NotFound(f"no token with id {token_id!r} that you may manage; "
                       "`pushsite tokens list` (or GET /api/tokens) lists them")

    # outgoing notifications (service/notify.py) --------------------------------------------------
    def add_endpoint(self, site_name: str, url: str, events: list[str] | None = None,
                     fmt: str = "standard") -> NotifyEndpoint:
        """Tell `url` about the site's `events` (default: all); the answer holds the signing
        secret. A URL the site already has is updated and enabled again, with its secret."""
        from pushsite.service import notify

        site = self.site(site_name)
        url, chosen = notify.check_endpoint(url, events, fmt)
        for endpoint in self.state.list_endpoints(site.name):
            if endpoint.url == url:
                endpoint.events, endpoint.format = chosen, fmt
                endpoint.disabled, endpoint.failing_since = False, 0.0
                self.state.put_endpoint(endpoint)
                return endpoint
        from pushsite.records import NotifyEndpoint

        endpoint = NotifyEndpoint(f"ep_{ids.new_id()}", site.name, url, notify.new_secret(),
                                  chosen, fmt)
        self.state.put_endpoint(endpoint)
        return endpoint

    def list_endpoints(self, site_name: str) -> list[NotifyEndpoint]:
        return self.state.list_endpoints(self.site(site_name).name)

    def remove_endpoint(self, site_name: str, endpoint_id: str) -> NotifyEndpoint:
        from pushsite.service import notify

        endpoint = notify.find_endpoint(self, self.site(site_name).name, endpoint_id)
        self.state.delete_endpoint(endpoint.site, endpoint.id)
        return endpoint

    def deliveries(self, site_name: str, endpoint_id: str, limit: int = 50) -> list[Delivery]:
        """An endpoint's delivery log, newest first."""
        from pushsite.service import notify

        endpoint = notify.find_endpoint(self, self.site(site_name).name, endpoint_id)
        return self.state.list_deliveries(endpoint.id, limit)

    def resend_delivery(self, site_name: str, endpoint_id: str, message_id: str) -> bool:
        """Send again a message the endpoint's delivery log shows given up (service/notify.py);
        False when that give-up had already been sent again."""
        from pushsite.service import notify

        endpoint = notify.find_endpoint(self, self.site(site_name).name, endpoint_id)
        return notify.resend(self, endpoint, message_id)

    # webhook deliveries --------------------------------------------------------------------------
    def remember_delivery(self, key: str) -> bool:
        """Record a delivery's dedup key in the state (every process sees it); True only the
        first time."""
        return self.state.remember(key)

    def forget_delivery(self, key: str) -> None:
        """Drop a key whose delivery was not handed on, so the host's retry is taken."""
        self.state.forget(key)

    # dashboard sessions ------------------------------------------------------------------------
    def end_session(self, session_id: str) -> None:
        """Sign a dashboard session out everywhere: its cookie is refused from now on."""
        self.state.remember(f"session-ended:{session_id}")

    def session_ended(self, session_id: str) -> bool:
        return self.state.recalls(f"session-ended:{session_id}")
