"""The build stage of a run: when a pushed commit (or a folder deployed with `--build`) asks
for a build, check it out into a work folder, run the build in the sandbox (deploy/build.py),
and deploy the output folder in place through the folder driver.

The site's variables and secrets (SiteSettings.variables) reach the build's environment;
secret values are redacted from every line of output before it is logged. A failed build
fails the deployment before anything is stored: the live site is untouched.
"""

from __future__ import annotations

import shutil
import tarfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pushsite.deploy.build import (
    BuildContext,
    Builds,
    WorkFolder,
    plan_for_commit,
    run_build,
)
from pushsite.deploy.buildcache import BuildCache, cache_paths
from pushsite.deploy.builder import BundleOutcome, ManifestBuilder
from pushsite.deploy.detect import BuildPlan, plan_for_bundle, plan_for_folder
from pushsite.deploy.folder import deploy_folder
from pushsite.deploy.siteconfig import parse_pushsite_toml
from pushsite.deploy.tarball import deploy_bundle
from pushsite.errors import BundleRejected, DeploymentCancelled, DeploymentFailed
from pushsite.model import Deployment, Status
from pushsite.names import branch_label
from pushsite.queues import open_queue
from pushsite.service.base import in_bucket
from pushsite.service.uploads import is_staged_upload

if TYPE_CHECKING:
    from pushsite.service.logs import DeployLog
    from pushsite.service.running import Running


def server_builds(config: Any) -> Builds:
    """The server's build settings (config.py: build_paths, builds, build_network)."""
    tools = tuple(Path(p).absolute() for p in str(config.build_paths or "").split(":") if p)
    return Builds(tools=tools, slots=int(config.builds or 0),
                  network=bool(config.build_network))


def deploy_commit_built(service: Running, deployment: Deployment, builder: ManifestBuilder,
                        log: DeployLog) -> BundleOutcome | None:
    """Build and deploy a pushed commit that asks for a build; None when it asks for none."""
    from pushsite.deploy.gitcommit import SiteRepos

    commit = deployment.bundle_key.removeprefix("git:")
    repo = SiteRepos(service.config.repos).path(deployment.site)
    plan = plan_for_commit(repo, commit)
    if plan is None:
        return None
    kept = WorkFolder.kept(f"{service.config.home}\0{deployment.site}\0{deployment.branch}",
                           server_builds(service.config).root)
    outcome = _built(service, deployment, builder, log, plan,
                     lambda work: work.checkout(repo, commit), work=kept)
    outcome.commit = commit
    return outcome


def deploy_folder_built(service: Running, deployment: Deployment, builder: ManifestBuilder,
                        log: DeployLog, folder: Path) -> BundleOutcome:
    """`pushsite deploy DIR --build`: the same sandbox, on a copy of the folder."""
    plan = plan_for_folder(folder)
    if plan is None:
        log.info("build", "--build: no build command and no generator found "
                 "(mkdocs.yml, a Hugo config, Jekyll's _config.yml, package.json with a build "
                 "script); deploying the folder as it is")
        return deploy_folder(folder, builder, service.config.limits(), deployment.id,
                             deployment.site, deployment.created)
    return _built(service, deployment, builder, log, plan, lambda work: work.copy(folder))


def deploy_staged_built(service: Running, deployment: Deployment, builder: ManifestBuilder,
                        log: DeployLog) -> BundleOutcome | None:
    """A staged bundle (a webhook's archive, an API upload, an object in a staging bucket on
    a builder) that asks for a build: unpacked into the work folder and built; None when it
    asks for none (it is then streamed as always). Sizes and counts are checked on the
    declared headers before anything is written, and members unpack under tarfile's `data`
    filter (no absolute paths, no `..`, no links leading out, no devices).

    Every bundle is looked into, whatever its size: one streamed pass of isal's gunzip over
    the tar headers (deploy/detect.py plan_for_bundle). A bundle in a staging bucket is
    looked into only where builds are handed over (a build queue is set): a builder
    downloads it first, and deploys the downloaded copy whether or not it asks for a build."""
    path = service._staged_file(deployment)
    if path is not None:
        plan, top = _plan_of_file(service, path)
        if plan is None:
            return None
        return _built(service, deployment, builder, log, plan,
                      lambda work: _unpack(path, top, work))
    if not (in_bucket(deployment.bundle_key) and is_builder(service.config)):
        return None
    fresh = WorkFolder(server_builds(service.config).root)
    work: WorkFolder | None = fresh
    try:
        path = _download(deployment.bundle_key, fresh.path / "bundle.tar.gz", log)
        plan, top = _plan_of_file(service, path)
        if plan is not None:
            work = None  # _built removes it when it ends
            return _built(service, deployment, builder, log, plan,
                          lambda into: _unpack(path, top, into), work=fresh)
        with open(path, "rb") as staged:
            return deploy_bundle(staged, builder, service.config.limits(), deployment.id,
                                 deployment.site, deployment.created)
    finally:
        if work is not None:
            work.remove_later()


def is_builder(config: Any) -> bool:
    """A process that runs builds handed over: its queue is the build queue (`pushsite
    worker --builds`). Any other process, where a build queue is set, hands them over."""
    return bool(config.build_queue) and config.build_queue == config.queue


def needs_handing_over(service: Running, deployment: Deployment) -> BuildPlan | None:
    """The build of a queued deployment that this process must hand to the builders: only
    where a build queue is set and this process is not a builder, and only for a staged
    bundle (a push builds where its repository is: on the server)."""
    config = service.config
    if not config.build_queue or is_builder(config):
        return None
    key = deployment.bundle_key
    if not key or key.startswith("git:") or is_staged_upload(key):
        return None
    try:
        if in_bucket(key):
            from pushsite.sources.s3bundle import open_bundle

            with open_bundle(key) as stream:
                plan, _top = plan_for_bundle(stream, config.max_files,
                                             config.max_total_mb << 20)
            return plan
        path = service._staged_file(deployment)
        return None if path is None else _plan_of_file(service, path)[0]
    except (tarfile.TarError, EOFError, zlib.error, DeploymentFailed):
        return None  # the run reads it again and records what is wrong with it (or gone)


def hand_over(service: Running, deployment: Deployment) -> bool:
    """Queue a deployment that needs a build on the build queue, for `pushsite worker
    --builds` (a Lambda has no sandbox); it stays `queued` until a builder takes it. True
    when handed over. The builder's own recovery re-sends it if that message is lost."""
    plan = needs_handing_over(service, deployment)
    if plan is None:
        return False
    queue = open_queue(service.config.build_queue)
    try:
        queue.send({"deployment": deployment.id})
    finally:
        queue.close()
    log = service.log_for(deployment)
    log.info("build", f"{plan.origin}: handed to the builders (`pushsite worker --builds` "
             f"on {queue_name(service.config.build_queue)}); this runner does not build")
    log.flush()
    return True


def queue_name(url: str) -> str:
    """A queue URL without its settings, as a log line names it."""
    return url.split("?", 1)[0]


def _plan_of_file(service: Running, path: Path) -> tuple[BuildPlan | None, str]:
    limits = service.config.limits()
    try:
        with open(path, "rb") as staged:
            return plan_for_bundle(staged, limits.max_files, limits.max_total_bytes)
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        return None, ""  # the deployer reads it again and says what is wrong with it


def _download(bundle_key: str, path: Path, log: DeployLog) -> Path:
    """A staged bucket's bundle copied to the builder's work folder (read twice: looked
    into, then unpacked or deployed)."""
    from pushsite.sources.s3bundle import open_bundle

    started = time.monotonic()
    with open_bundle(bundle_key) as remote, open(path, "wb") as out:
        shutil.copyfileobj(remote, out, 1 << 20)
    log.info("build", f"downloaded the staged bundle ({path.stat().st_size} bytes) in "
             f"{time.monotonic() - started:.2f}s")
    return path


def _unpack(path: Path, top: str, work: WorkFolder) -> None:
    prefix = top + "/" if top else ""
    with tarfile.open(path, "r:gz") as tar:
        chosen = []
        for member in tar.getmembers():
            if not member.name.startswith(prefix) or member.name == top:
                continue
            member.name = member.name[len(prefix):]
            if member.islnk():
                member.linkname = member.linkname.removeprefix(prefix)
            chosen.append(member)
        try:
            tar.extractall(work.src, members=chosen, filter="data")
        except tarfile.FilterError as exc:
            raise BundleRejected(f"the bundle cannot be unpacked to build it: {exc}") \
                from None


def _not_superseded(service: Running, deployment: Deployment) -> None:
    """Skip a build not yet started when a newer push to the same branch is on its way (its
    build has the newer files); a running build is left to finish."""
    newest = service.state.list_deployments(deployment.site, branch=deployment.branch,
                                            limit=1)
    if newest and newest[0].id > deployment.id and newest[0].status not in (
            Status.FAILED, Status.CANCELLED, Status.TIMED_OUT):
        raise DeploymentCancelled(f"superseded by deployment {newest[0].id}, a newer push to "
                                  f"{deployment.branch}: this one was not built")


def _know_previous(builder: ManifestBuilder) -> None:
    """A push's deployer knows the previous manifest's paths, not its blobs (it carries
    files over by git id): a built output has no git ids, so tell it which blobs the previous
    deployment stored, or every output file costs store look-ups (measured: 1.8 s of a
    1,000-page Hugo site's 2.1 s deploy)."""
    previous = builder.previous
    if previous is None:
        return
    known = builder.target.get().known
    if not isinstance(known, dict):  # a push's deploy starts from a dict (_deploy_setup);
        return  # a previous deploy's read-only table (entries.StoredBlobs) knows its blobs
    for entry in previous.files.values():
        known.setdefault(entry.hash, (dict(entry.encodings), entry.refs))


def site_cache(service: Any, site: str) -> BuildCache:
    """The site's build caches on this machine ($PUSHSITE_HOME/build-cache/<site>)."""
    return BuildCache(service.config.home / "build-cache", site)


def build_context(service: Running, deployment: Deployment) -> BuildContext:
    site = service.state.get_site(deployment.site)
    config = service.config
    variables = getattr(site.settings, "variables", ())
    return BuildContext(
        site=site.name, branch=deployment.branch, commit=deployment.commit,
        deploy_id=deployment.id, production=deployment.branch == site.production_branch,
        url=config.site_url(site.name),
        deploy_url=config.site_url(f"{deployment.id}--{site.name}"),
        variables={v.name: v.value for v in variables},
        secrets=tuple(v.value for v in variables if v.secret))


def _built(service: Running, deployment: Deployment, builder: ManifestBuilder, log: DeployLog,
           plan: BuildPlan, populate: Any, work: WorkFolder | None = None) -> BundleOutcome:
    builds = server_builds(service.config)
    work = work or WorkFolder(builds.root)
    try:
        started = time.monotonic()
        populate(work)
        log.info("build", f"prepared the work folder in {time.monotonic() - started:.2f}s")
        settings_file = work.src / "pushsite.toml"
        settings = (parse_pushsite_toml(settings_file.read_bytes())
                    if settings_file.is_file() and not settings_file.is_symlink() else None)
        cache = site_cache(service, deployment.site)
        paths = cache_paths(plan)
        label = branch_label(deployment.branch)
        production = branch_label(service.state.get_site(deployment.site).production_branch)
        log.info("build", cache.restore(work.src, tuple(dict.fromkeys((label, production))),
                                        paths))
        output = run_build(plan, work, build_context(service, deployment), builds, log,
                           check=lambda: builder.deadline.check(builder.counters),
                           before_start=lambda: _not_superseded(service, deployment))
        log.info("build", cache.save(work.src, label, paths))
        log.flush()
        _know_previous(builder)
        outcome = deploy_folder(output, builder, service.config.limits(), deployment.id,
                                deployment.site, deployment.created,
                                exclude=settings.exclude if settings else ())
        outcome.settings = settings  # the source's pushsite.toml speaks for the site
        return outcome
    finally:
        work.remove_later()
