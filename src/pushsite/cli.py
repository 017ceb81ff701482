"""The `pushsite` command: thin commands that parse, build a Config, and call the service.

Errors are translated here once: any PushsiteError prints `error: <message>` on stderr and
exits with its exit_code (see errors.py); anything else is a bug and shows a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from pushsite import __version__
from pushsite.config import Config, load_config
from pushsite.errors import ConfigError, Interrupted, PushsiteError
from pushsite.limits import human_size
from pushsite.model import Deployment
from pushsite.present import control_url as _control_url
from pushsite.present import deployment_json as _deployment_json
from pushsite.present import err, escape, locked_out, out, report_error
from pushsite.words import plural

if TYPE_CHECKING:  # imported where a command needs it: `pushsite --help` stays quick
    from pushsite.deploy.builder import Counters
    from pushsite.records import Domain
    from pushsite.service import Service
    from pushsite.service.worker import FollowUp

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn a PushsiteError into one line on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PushsiteError as exc:
            _reported.append(exc)
            sys.exit(report_error(exc))

    return cast(F, wrapper)


_reported: list[PushsiteError] = []  # what reports_errors printed in this process


def _close(service: Service, exiting: bool) -> None:
    """Close the backends when the command ends. An error doing so is one line as well, and
    none after the command's own: a full disk fails a deploy, then the store's final flush."""
    try:
        service.close(exiting=exiting)
    except PushsiteError as exc:
        if _reported:
            return
        _reported.append(exc)
        sys.exit(report_error(exc))


def _config(ctx: click.Context, **overrides: Any) -> Config:
    """The settings, with the public URL of the server running on this home (when one is and
    none was given): printed URLs carry the port actually served."""
    config = load_config(home=ctx.obj.get("home"), **overrides)
    if not overrides.get("public_url") and not os.environ.get("PUSHSITE_PUBLIC_URL"):
        from pushsite.web.listening import running

        served = running(config.home)
        if served is not None:
            config = replace(config, public_url=served.public_url)
    return config


def _service(ctx: click.Context, **overrides: Any) -> Service:
    from pushsite.service import Service

    service = Service(_config(ctx, **overrides))
    # backends flushed and closed when the command ends (only flushed before a quick exit)
    ctx.call_on_close(lambda: _close(service, bool(ctx.obj.get("quick_exit"))))
    return service


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "auto_envvar_prefix": "PUSHSITE"})
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="Data directory (default $XDG_DATA_HOME/pushsite, i.e. "
              "~/.local/share/pushsite; env PUSHSITE_HOME).")
@click.version_option(__version__, prog_name="pushsite")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """Put a static site on the web with `git push` or `pushsite deploy`.

    \b
    Quick start:
      pushsite deploy ./public --site blog     # deploy a folder
      pushsite serve                           # http://blog.localhost:8000/
    """
    ctx.ensure_object(dict)
    ctx.obj["home"] = home


def _progress_bar() -> tuple[Any, Callable[[Counters], None] | None]:
    if not sys.stderr.isatty() or not err.is_terminal:  # isatty first: no rich import
        return None, None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=err.real(), transient=True)
    task = progress.add_task("deploying")
    last = [0.0]

    def update(counters: Counters) -> None:
        now = time.monotonic()
        if now - last[0] > 0.1:
            last[0] = now
            progress.update(task, description=f"deploying: {counters.describe()}")

    return progress, update


@cli.command()
@click.argument("source", required=False)
@click.option("--site", default=None, help="Site name (a DNS label, e.g. blog; default: the "
              "site this folder is linked to with `pushsite link`).")
@click.option("--branch", default=None, help="Branch (default: the site's production branch).")
@click.option("--message", "-m", default="", help="A note stored with the deployment.")
@click.option("--timeout", default=900.0, show_default=True, type=float,
              help="Seconds before the deploy stops, marked timed_out; the live site stays.")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON on stdout.")
@click.option("--server", default=None, envvar="PUSHSITE_SERVER",
              help="Deploy to a remote `pushsite serve` (env PUSHSITE_SERVER) instead of the "
              "local data directory.")
@click.option("--token", default=None, envvar="PUSHSITE_TOKEN",
              help="Deploy token for --server (env PUSHSITE_TOKEN).")
@click.option("--create", is_flag=True, help="Create the site if it does not exist (without "
              "it a deploy to an unknown site fails: a typo never makes a new site).")
@click.option("--draft", is_flag=True, help="Move no alias: the deployment is reached at its "
              "own URL only, until `pushsite promote ID`.")
@click.option("--build", "run_build", is_flag=True, help="Build the folder first (its "
              "pushsite.toml [build], netlify.toml or a detected generator), in the same "
              "bubblewrap sandbox as the server's builds.")
@click.pass_context
@reports_errors
def deploy(ctx: click.Context, source: str | None, site: str | None, branch: str | None,
           message: str, timeout: float, as_json: bool, server: str | None, token: str | None,
           create: bool, run_build: bool, draft: bool) -> None:
    """Deploy SOURCE (a folder, a .tar.gz, or - for a tar.gz on stdin) to a site.

    In a folder linked with `pushsite link SITE`, SOURCE defaults to that folder (its
    pushsite.toml's `publish` applies) and the site to the linked one.

    Exits 0 once the deployment is live. On any error the live site stays as it was.

    \b
    Examples:
      pushsite sites create blog
      pushsite deploy ./public --site blog
      git archive --format=tar.gz HEAD | pushsite deploy - --site blog --branch feature-x
      pushsite deploy site.tar.gz --site blog --server https://deploy.example.com --token T
      pushsite link blog && pushsite deploy
    """
    ctx.obj["quick_exit"] = True
    with _ctrl_c_cancels():
        _deploy(ctx, source, site, branch, message, timeout, as_json, server, token, create,
                run_build, draft)


def _deploy(ctx: click.Context, source: str | None, site: str | None, branch: str | None,
            message: str, timeout: float, as_json: bool, server: str | None,
            token: str | None, create: bool, run_build: bool, draft: bool) -> None:
    if branch is not None and not branch.strip():
        # `--branch "$CI_BRANCH"` with the variable unset must not deploy to production
        raise ConfigError("--branch is empty (is the CI variable naming the branch set?); "
                          "omit --branch to deploy the production branch")
    source, site = _deploy_target(source, site)
    if server:
        from pushsite.remote import deploy_source

        if draft:
            raise ConfigError("--draft deploys to this machine's home only; drop --server, "
                              "or deploy a preview branch with --branch")

        try:
            uploaded = deploy_source(server, token or "", source, site=site,
                                     branch=branch, message=message, timeout=timeout,
                                     echo=None if as_json else err.print, create=create)
        except PushsiteError as exc:
            if as_json and (remote := getattr(exc, "deployment", None)):  # remote._failure's
                click.echo(json.dumps(remote))
            raise
        _report(uploaded, as_json, control=server)
        return
    from pushsite.localdeploy import deploy_here

    service = _service(ctx)
    progress, update = _progress_bar()

    def show_failed(failed: Deployment) -> None:
        click.echo(json.dumps(_deployment_json(service.config, failed, service)))

    deploy_here(service, source, site, branch=branch, message=message, timeout=timeout,
                create=create, draft=draft, build=run_build,
                show=lambda live: _report(live, as_json, service),
                show_failed=show_failed if as_json else None,
                progress=update, showing=progress, unbuilt=_warn_unbuilt)


@contextmanager
def _ctrl_c_cancels() -> Iterator[None]:
    """Ctrl-C raises Interrupted (a DeploymentCancelled) instead of KeyboardInterrupt: a run
    records its deployment `cancelled`, not failed with an internal error, and the command
    exits 130 (errors.py)."""
    import signal

    def interrupted(signum: int, frame: Any) -> None:
        raise Interrupted("interrupted (Ctrl-C)")

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _warn_unbuilt(folder: Path) -> None:
    """A folder whose files name a build command, deployed without --build: say so."""
    from pushsite.deploy.detect import plan_for_folder

    try:
        plan = plan_for_folder(folder)
    except PushsiteError:
        return  # the deploy itself reports a bad pushsite.toml
    if plan is not None and plan.settings.source != "detected":
        click.echo(f"warning: {plan.settings.source} names a build command "
                   f"(`{plan.command}`); this deploys the folder as it is: add --build to "
                   "build it first", err=True)


def _deploy_target(source: str | None, site: str | None) -> tuple[str, str]:
    """SOURCE and --site, defaulted from the linked folder (deploy/linked.py)."""
    linked = None
    if site is None or source is None:
        from pushsite.deploy.linked import find_link

        linked = find_link(Path.cwd())
    if site is None:
        if linked is None:
            raise ConfigError("which site? pass --site NAME, or link this folder once with "
                              "`pushsite link NAME`")
        site = linked.site
    if source is None:
        source = str(linked.folder) if linked is not None and linked.site == site else "."
    return source, site


def _report(deployment: Deployment | dict[str, Any], as_json: bool, service: Any = None,
            control: str | None = None) -> None:
    """The deployment as JSON, or every URL a user needs: the production or preview URL (a
    draft has none), its own URL and its log on the dashboard, then what it did."""
    if isinstance(deployment, Deployment):
        data = _deployment_json(service.config, deployment, service)
    else:
        from pushsite.remote import report_data

        data = report_data(deployment, control) if control else deployment
    if as_json:
        click.echo(json.dumps(data))
        return
    urls, context = data["urls"], data["context"]
    held = locked_out(data)
    lines = []
    if context == "production" and not held:
        lines.append(("production", urls.get("production") or ""))
    elif context == "preview":
        lines.append(("preview", urls.get("branch") or ""))
    lines.append(("draft" if context == "draft" else "deployment", urls.get("deployment", "")))
    if urls.get("log"):
        lines.append(("log", urls["log"]))
    for word, url in lines:
        colour = "green" if word in ("production", "preview", "draft") else "dim"
        err.print(f"[{colour}]{word + ':':<12}[/]{escape(url)}", highlight=False,
                  soft_wrap=True)
    err.print(f"{data['status']}: {plural(data['files'], 'file')}, "
              f"{plural(data['blobs_new'], 'new blob')}, {data['blobs_reused']} reused, "
              f"{human_size(data['bytes_stored'])} stored, {data['seconds'] or 0:.2f}s; "
              f"deployment {data['id']}", highlight=False, soft_wrap=True)
    if context == "draft":
        err.print(f"promote it to production with: pushsite promote {data['id']}",
                  highlight=False, soft_wrap=True)
    elif held:
        err.print(f"production of {data['site']} is locked: not published; promote it with "
                  f"`pushsite promote {data['id']}`, or `pushsite unlock {data['site']}`",
                  highlight=False, soft_wrap=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option("--base-domain", default=None, help="Sites answer at <site>.<base-domain> "
              "(default localhost).")
@click.option("--store", default=None, help="Object store URL (file:///..., s3://bucket/p).")
@click.option("--state", default=None, help="State URL (sqlite:///..., dynamodb://table).")
@click.option("--queue", default=None, help="Queue URL (local:///..., sqs://queue).")
@click.option("--debug", is_flag=True, help="Show tracebacks in error pages.")
@click.option("--http-workers", default=1, show_default=True, type=int,
              help="Processes answering HTTP (the edge scales with cores); one deploy worker "
              "runs beside them either way.")
@click.option("--public-url", default=None, help="How visitors reach the sites, e.g. "
              "https://example.com behind Caddy: printed URLs and pages use it "
              "(default http://<base-domain>:<port>, https with --tls-cert).")
@click.option("--forwarded-allow-ips", default=None, help="Proxies (IPs or networks, "
              "comma-separated) whose X-Forwarded-For/-Proto/-Host are believed; default "
              "none, e.g. 127.0.0.1 behind a Caddy on this machine.")
@click.option("--tls-previews/--no-tls-previews", default=None, help="Let Caddy's on-demand "
              "TLS certify branch previews and permalinks too (default off).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None,
              help="Serve HTTPS with this certificate chain (PEM); SIGHUP reloads it.")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None,
              help="The private key of --tls-cert (PEM).")
@click.pass_context
@reports_errors
def serve(ctx: click.Context, host: str, port: int, base_domain: str | None, store: str | None,
          state: str | None, queue: str | None, debug: bool, http_workers: int,
          public_url: str | None, forwarded_allow_ips: str | None, tls_previews: bool | None,
          tls_cert: str | None, tls_key: str | None) -> None:
    """Serve every site, the dashboard, the API and the git remote on one port.

    \b
    Sites:   http://<site>.localhost:8000/            production
             http://<branch>--<site>.localhost:8000/  branch preview
             http://<id>--<site>.localhost:8000/      one deployment, forever
    Control: http://127.0.0.1:8000/  (dashboard, /api, /<site>.git, /hooks/...)
    """
    from pushsite.web.server import run_server

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    scheme = "https" if tls_cert else "http"
    config = load_config(home=ctx.obj.get("home"), base_domain=base_domain, store=store,
                         state=state, queue=queue, public_url=public_url,
                         forwarded_allow_ips=forwarded_allow_ips, tls_previews=tls_previews)
    if not public_url and not os.environ.get("PUSHSITE_PUBLIC_URL"):  # the port served
        config = replace(config, public_url=f"{scheme}://{config.base_domain}:{port}")
    err.print(f"pushsite serving on {scheme}://{host}:{port}/  (sites at "
              f"{config.site_url('<site>')})", highlight=False, soft_wrap=True)
    run_server(config, host=host, port=port, workers=http_workers, debug=debug,
               tls=(tls_cert, tls_key) if tls_cert and tls_key else None)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print it as one JSON object.")
@click.pass_context
@reports_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Where the data lives, whether a server runs on it (and where), and this folder's site."""
    from pushsite.web.listening import running

    config = _config(ctx)
    served = running(config.home)
    data: dict[str, Any] = {"home": str(config.home),
                            "server": served.to_dict() if served else None,
                            "public_url": config.public_url}
    data.update(_linked_status(ctx))
    if as_json:
        click.echo(json.dumps(data))
        return
    lines = [("home", str(config.home))]
    if served:
        lines.append(("server", f"running at {served.url}/ (pid {served.pid}); sites at "
                                f"{config.site_url('<site>')}"))
    else:
        lines.append(("server", "not running on this home (start one with: pushsite serve)"))
    lines += _linked_lines(data)
    for name, value in lines:
        out.print(f"{name + ':':<12}{escape(value)}", highlight=False, soft_wrap=True)


def _linked_status(ctx: click.Context) -> dict[str, Any]:
    """The linked site's part of `status` (see `pushsite link`): its production URL and its
    newest deployment, when the site exists on this home."""
    from pushsite.deploy.linked import find_link
    from pushsite.errors import SiteNotFound

    linked = find_link(Path.cwd())
    if linked is None:
        return {"site": None}
    data: dict[str, Any] = {"name": linked.site, "file": str(linked.file), "exists": False}
    service = _service(ctx)
    try:
        site = service.site(linked.site)
    except SiteNotFound:
        return {"site": data}
    alias = service.state.get_alias(site.name, "production")
    newest = service.state.list_deployments(site.name, limit=1)
    data.update(exists=True, production_branch=site.production_branch,
                production_url=service.config.site_url(site.name),
                production_deployment=alias.deployment_id if alias else None,
                newest=_deployment_json(service.config, newest[0], service) if newest else None)
    return {"site": data}


def _linked_lines(data: dict[str, Any]) -> list[tuple[str, str]]:
    site = data["site"]
    if site is None:
        return [("site", "no site linked here (link this folder with: pushsite link SITE)")]
    lines = [("site", f"{site['name']} (linked in {site['file']})")]
    if not site["exists"]:
        return lines + [("", f"no site named {site['name']!r} on this home; create it with: "
                             f"pushsite sites create {site['name']}")]
    live = site["production_deployment"]
    lines.append(("production", f"{site['production_url']}  "
                                f"({f'deployment {live}' if live else 'nothing live yet'})"))
    newest = site["newest"]
    if newest:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(newest["created"]))
        lines.append(("newest", f"{newest['id']} {newest['status']} ({newest['branch']}, "
                                f"{started})"))
    return lines


@cli.command()
@click.argument("site")
@click.option("--create", is_flag=True, help="Also create the site if it does not exist.")
@click.pass_context
@reports_errors
def link(ctx: click.Context, site: str, create: bool) -> None:
    """Link this folder to SITE: `pushsite deploy` here needs no --site (SOURCE: this folder)."""
    from pushsite.deploy.linked import write_link

    service = _service(ctx)
    service.deploy_target(site, create)
    linked = write_link(Path.cwd(), site)
    err.print(f"linked {escape(str(linked.folder))} to site {site} ({escape(str(linked.file))})"
              f"; deploy it with: pushsite deploy", highlight=False, soft_wrap=True)


@cli.command("open")
@click.argument("site", required=False)
@click.option("--dashboard", is_flag=True, help="The site's page on the dashboard.")
@click.option("--deployment", "deployment_id", default=None, help="One deployment's own URL.")
@click.pass_context
@reports_errors
def open_(ctx: click.Context, site: str | None, dashboard: bool,
          deployment_id: str | None) -> None:
    """Open the site (default: the linked one) in a browser, or print its URL without one."""
    if site is None:
        _, site = _deploy_target(".", None)
    service = _service(ctx)
    record = service.site(site)
    if deployment_id:
        deployment = service.state.get_deployment(deployment_id)
        if deployment.site != record.name:
            from pushsite.errors import DeploymentNotFound

            raise DeploymentNotFound(f"deployment {deployment_id} belongs to site "
                                     f"{deployment.site!r}, not {record.name!r}")
        url = service.config.site_url(f"{deployment.id}--{record.name}")
    elif dashboard:
        url = f"{_control_url(service.config)}/sites/{record.name}"
    else:
        url = service.config.site_url(record.name)
    click.echo(url)
    if _has_display():
        import webbrowser

        webbrowser.open(url)


def _has_display() -> bool:
    """A browser can open here: a graphical session (or macOS, Windows)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@cli.command()
@click.option("--queue", default=None, help="Queue URL to consume (local:///..., sqs://...).")
@click.option("--store", default=None, help="Object store URL.")
@click.option("--state", default=None, help="State URL.")
@click.option("--once", is_flag=True, help="Handle what is queued now, then exit.")
@click.option("--builds", is_flag=True, help="Be a builder: consume the build queue "
              "(PUSHSITE_BUILD_QUEUE, or --queue) and run each build in the bubblewrap sandbox "
              "here.")
@click.pass_context
@reports_errors
def worker(ctx: click.Context, queue: str | None, store: str | None, state: str | None,
           once: bool, builds: bool) -> None:
    """Run deployments from a queue (several workers may share one queue).

    \b
    With --builds it is a builder. Where PUSHSITE_BUILD_QUEUE is set, a deployer that
    must not build (the Lambda function, serve, a plain worker) hands each staged bundle
    that asks for a build to that queue; builders take it from there, build it in the
    sandbox (bubblewrap must be installed) and deploy the output, with the deployers'
    PUSHSITE_STORE and PUSHSITE_STATE. Run two or more: a builder that dies mid-build
    leaves its message to reappear after its lease (the queue URL's ?visibility=), and
    another builder takes the deployment over and builds it again.

    \b
    Serverless (a second SQS queue beside the one the Lambda reads):
      export PUSHSITE_BUILD_QUEUE='sqs://pushsite-builds?visibility=60'
      pushsite worker --builds
    One machine (serve hands builds over; two builders take them):
      export PUSHSITE_BUILD_QUEUE="local://$PUSHSITE_HOME/builds.db"
      pushsite serve
      pushsite worker --builds
      pushsite worker --builds
    """
    from pushsite.service.worker import run_worker

    if builds:
        from pushsite.deploy.sandbox import bwrap_path

        queue = queue or _config(ctx).build_queue
        if not queue:
            raise ConfigError("worker --builds needs the build queue: set PUSHSITE_BUILD_QUEUE "
                              "(the queue deployers hand builds to), or give --queue")
        bwrap_path()  # refuse at start, naming the package, rather than fail each build
        service = _service(ctx, queue=queue, store=store, state=state, build_queue=queue)
    else:
        service = _service(ctx, queue=queue, store=store, state=state)
    after = (lambda follow: _mirror_live(service, follow)) if service.config.mirror else None
    run_worker(service, once=once, echo=err.print, kind="builder" if builds else "worker",
               after=after)


def _mirror_live(service: Service, follow: FollowUp) -> None:
    """A worker's follow-up, as the Lambda's: the hosting copy (PUSHSITE_MIRROR) follows what
    went live, or goes on where a Lambda's mirror paused. A refusal by the max-delete guard
    is final (on the deployment's record); an outage raises, and the message comes back."""
    from pushsite.aws.mirror import live_sites, mirror_production

    sites = follow.mirror_sites or live_sites(service, follow.deployment_ids)
    for site in sites:
        try:
            report = mirror_production(service, site)
        except ConfigError as exc:
            err.print(f"worker: not mirrored: {exc}", highlight=False, soft_wrap=True)
            continue
        err.print(f"worker: mirrored {site}: {report.summary()}", highlight=False)


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the sites as JSON lines.")
@click.pass_context
def sites(ctx: click.Context, as_json: bool) -> None:
    """Sites: list them (the default), create one, delete one.

    
    Deploys and pushes go only to sites created on purpose:
      pushsite sites create blog
      pushsite deploy ./public --site blog
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(sites_list, as_json=as_json)


@sites.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the sites as JSON lines.")
@click.pass_context
@reports_errors
def sites_list(ctx: click.Context, as_json: bool) -> None:
    """List sites with their production URL and live deployment."""
    from pushsite.state import SITE_PAGE

    service = _service(ctx)
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while True:  # a page of sites and their live deployments at a time (issue 20)
        page = service.state.list_sites(after=after, limit=SITE_PAGE)
        heads = service.state.site_heads([site.name for site in page])
        for site in page:
            live = heads[site.name].live if site.name in heads else None
            rows.append({"name": site.name, "production_branch": site.production_branch,
                         "url": service.config.site_url(site.name),
                         "live_deployment": live.id if live else None,
                         "commit": live.commit if live else ""})
        if len(page) < SITE_PAGE:
            break
        after = page[-1].name
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        err.print("no sites yet; create one with: pushsite sites create NAME", highlight=False)
        return
    from rich.table import Table

    table = Table("site", "production branch", "live deployment", "commit", "url")
    for row in rows:
        table.add_row(escape(row["name"]), escape(row["production_branch"]),
                      row["live_deployment"] or "-", row["commit"][:12], row["url"])
    out.print(table)


@sites.command("create")
@click.argument("name")
@click.option("--production-branch", default="main", show_default=True,
              help="The branch whose deploys go to production.")
@click.pass_context
@reports_errors
def sites_create(ctx: click.Context, name: str, production_branch: str) -> None:
    """Create the site NAME (a DNS label, e.g. blog), ready for deploys and pushes."""
    service = _service(ctx)
    site = service.create_site(name, production_branch)
    err.print(f"created site {site.name} (production branch {escape(site.production_branch)})"
              f": {service.config.site_url(site.name)}", highlight=False, soft_wrap=True)


@sites.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask (for scripts).")
@click.pass_context
@reports_errors
def sites_delete(ctx: click.Context, name: str, yes: bool) -> None:
    """Delete the site NAME: its aliases, deployments, logs, repository and settings (its
    files' blobs go at the next `pushsite prune`)."""
    service = _service(ctx)
    site = service.site(name)
    if not yes:
        typed = click.prompt(f"this deletes site {site.name} and every deployment of it; "
                             "type its name to confirm", default="", show_default=False,
                             err=True)
        if typed != site.name:
            err.print("not deleted: the name typed does not match", highlight=False)
            sys.exit(1)
    service.delete_site(site.name)
    err.print(f"deleted site {site.name}", highlight=False)


@cli.command()
@click.argument("site")
@click.option("--limit", default=20, show_default=True, help="How many to show.")
@click.option("--branch", default=None, help="Only this branch's deployments.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
@reports_errors
def deploys(ctx: click.Context, site: str, limit: int, branch: str | None,
            as_json: bool) -> None:
    """List a site's deployments, newest first; * marks the one production serves.

    The ids shown are the shortest prefixes that name each deployment alone: `pushsite log`,
    `promote`, `rollback` and `cancel` take them.
    """
    service = _service(ctx)
    record = service.site(site)
    if branch is not None:
        from pushsite.names import check_branch_name

        check_branch_name(branch)
    rows = service.state.list_deployments(record.name, limit=limit, branch=branch)
    alias = service.state.get_alias(record.name, "production")
    production = alias.deployment_id if alias else None
    short = service.short_ids(rows)
    if as_json:
        for d in rows:
            click.echo(json.dumps({**d.to_dict(), "short_id": short[d.id],
                                   "context": _context(d, record.production_branch),
                                   "production": d.id == production}))
        return
    if not rows:
        if branch is not None:
            err.print(f"no deployments of branch {branch!r} of {record.name}", highlight=False)
            return
        err.print(f"no deployments of {record.name} yet; deploy with: pushsite deploy FOLDER "
                  f"--site {record.name}", highlight=False)
        return
    now = time.time()
    table = [["", "id", "status", "context", "started", "commit", "message"]]
    for d in rows:
        note = f"error: {d.error}" if d.error else d.message
        table.append(["*" if d.id == production else "", short[d.id], str(d.status),
                      _context(d, record.production_branch), _started(d.started or d.created, now),
                      d.commit[:7], note.splitlines()[0] if note else ""])
    for line in _fit(table, [1, 26, 9, 20, 18, 7], _table_width()):
        click.echo(line)
    if production:
        err.print(f"* production: {service.config.site_url(record.name)}", highlight=False)


def _table_width() -> int:
    """80 columns, or a terminal's width when it has another (COLUMNS too)."""
    import shutil

    return shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80


def _fit(rows: list[list[str]], caps: list[int], width: int) -> list[str]:
    """Rows as aligned columns within `width`: each column as wide as its longest cell up to
    its cap (the last takes what is left), a cut cell ending in an ellipsis."""
    widths = [min(cap, max(len(row[i]) for row in rows)) for i, cap in enumerate(caps)]
    widths.append(max(0, width - sum(widths) - 2 * len(widths)))

    def cut(text: str, size: int) -> str:
        return text if len(text) <= size else text[:max(size - 1, 0)] + "…"

    return ["  ".join(cut(cell, size).ljust(size) for cell, size in zip(row, widths, strict=True)
                      ).rstrip() for row in rows]


def _context(deployment: Deployment, production_branch: str) -> str:
    """Where a deployment went: production, a branch's preview, or a draft (no alias)."""
    if deployment.draft:
        return "draft"
    if deployment.branch == production_branch:
        return "production"
    return f"preview {deployment.branch}"


def _started(when: float, now: float) -> str:
    """Local time (the date too when not today) and how long ago, e.g. `14:03 5m ago`."""
    local = time.localtime(when)
    same_day = time.localtime(now)[:3] == local[:3]
    stamp = time.strftime("%H:%M" if same_day else "%b %d %H:%M", local)
    ago = max(0, int(now - when))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if ago >= size:
            return f"{stamp} {ago // size}{unit} ago"
    return f"{stamp} {ago}s ago"


_REF_HELP = ("DEPLOYMENT is an id, a unique prefix of one (at least 4 characters, as "
             "`pushsite deploys` shows them), or a site's name for its newest deployment.")


@cli.command(epilog=_REF_HELP)
@click.argument("deployment")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
@reports_errors
def log(ctx: click.Context, deployment: str, as_json: bool) -> None:
    """Print a deployment's log."""
    service = _service(ctx)
    deploy_id = service.find_deployment(deployment).id
    for line in service.state.get_logs(deploy_id):
        if as_json:
            click.echo(json.dumps(line.to_dict()))
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(line.time))
            click.echo(f"{stamp} {line.level:<7} {line.stage:<9} {line.message}")


@cli.command(epilog="DEPLOYMENT is an id or a unique prefix of one (at least 4 characters).")
@click.argument("site")
@click.argument("deployment", required=False)
@click.option("--lock", "lock_too", is_flag=True, help="Also lock production, so the next "
              "push does not replace the rollback (`pushsite unlock SITE` ends it).")
@click.pass_context
@reports_errors
def rollback(ctx: click.Context, site: str, deployment: str | None, lock_too: bool) -> None:
    """Point production at DEPLOYMENT (default: the one before the live one). Instant."""
    service = _service(ctx)
    deploy_id = service.find_deployment(deployment, site=service.site(site).name).id \
        if deployment else None
    target = service.rollback(site, deploy_id)
    err.print(f"production of {site} now serves {target.id} "
              f"({target.commit[:12] or 'no commit'})", highlight=False)
    if lock_too:
        service.lock(site)
        err.print(f"production of {site} is locked: pushes deploy without going live until "
                  f"`pushsite unlock {site}`", highlight=False)
    elif not service.site(site).settings.locked:
        err.print(f"hint: the next push to {service.site(site).production_branch} replaces it;"
                  f" keep it with `pushsite lock {site}`", highlight=False, soft_wrap=True)
    _follow_mirror(service, target.site)


def _follow_mirror(service: Service, site: str) -> None:
    """The hosting copy follows production (PUSHSITE_MIRROR) after a rollback or promote."""
    if service.config.mirror:
        from pushsite.aws.mirror import mirror_production

        report = mirror_production(service, site)
        err.print(f"mirrored {site}: {report.summary()}", highlight=False)


@cli.command()
@click.argument("site")
@click.pass_context
@reports_errors
def lock(ctx: click.Context, site: str) -> None:
    """Lock SITE's production: pushes and deploys to its production branch become ready at
    their own URL without going live, until `pushsite unlock SITE` (promote one meanwhile
    with `pushsite promote ID`)."""
    record = _service(ctx).lock(site)
    err.print(f"production of {record.name} is locked; `pushsite unlock {record.name}` ends "
              "it", highlight=False)


@cli.command()
@click.argument("site")
@click.pass_context
@reports_errors
def unlock(ctx: click.Context, site: str) -> None:
    """Unlock SITE's production: the next deploy of its production branch goes live."""
    record = _service(ctx).lock(site, False)
    err.print(f"production of {record.name} is unlocked: the next deploy of "
              f"{record.production_branch} goes live", highlight=False)


@cli.command(epilog=_REF_HELP)
@click.argument("deployment")
@click.pass_context
@reports_errors
def promote(ctx: click.Context, deployment: str) -> None:
    """Point production at the ready DEPLOYMENT (a draft, a preview): instant."""
    service = _service(ctx)
    target = service.promote(service.find_deployment(deployment).id)
    err.print(f"promoted {target.id}: production of {target.site} serves it at "
              f"{service.config.site_url(target.site)}", highlight=False, soft_wrap=True)
    _follow_mirror(service, target.site)


@cli.command(epilog=_REF_HELP)
@click.argument("deployment")
@click.pass_context
@reports_errors
def cancel(ctx: click.Context, deployment: str) -> None:
    """Cancel a queued or running deployment."""
    service = _service(ctx)
    cancelled = service.cancel(service.find_deployment(deployment).id)
    err.print(f"cancelled {cancelled.id}", highlight=False)


@cli.command()
@click.argument("site")
@click.option("--keep", required=True, type=int, help="How many recent deployments to keep.")
@click.pass_context
@reports_errors
def prune(ctx: click.Context, site: str, keep: int) -> None:
    """Delete old deployments of SITE and the blobs no kept deployment uses."""
    result = _service(ctx).prune(site, keep)
    repo = (f", and freed {result['repo_freed']:,} bytes of its git repository"
            if "repo_freed" in result else "")
    err.print(f"pruned {plural(result['deployments'], 'deployment')} and "
              f"{plural(result['blobs'], 'blob')}{repo}", highlight=False, soft_wrap=True)


@cli.command()
@click.pass_context
@reports_errors
def verify(ctx: click.Context) -> None:
    """Check that every ready deployment's blobs exist and hash right."""
    problems = _service(ctx).verify()
    for problem in problems:
        err.print(f"[red]problem:[/] {problem}", highlight=False, soft_wrap=True)
    if problems:
        sys.exit(1)
    err.print("every manifest's blobs are present and intact")


@cli.group()
def tokens() -> None:
    """Deploy tokens for git push, webhooks' API and remote deploys."""


@tokens.command("create")
@click.option("--name", default="deploy", show_default=True, help="A label to recognise it.")
@click.option("--site", default=None, help="Limit the token to one site (default: all sites, "
              "and it may create sites).")
@click.option("--admin", is_flag=True, help="Also allow managing: creating, changing and "
              "deleting sites, build variables, notifications, domains (approved at once "
              "for an every-site admin), prune, and tokens. Without it a token deploys, "
              "rolls back, promotes, cancels and reads.")
@click.pass_context
@reports_errors
def tokens_create(ctx: click.Context, name: str, site: str | None, admin: bool) -> None:
    """Create a token and print it once (only its hash is stored)."""
    secret = _service(ctx).create_token(name, site, ["deploy", "admin"] if admin else None)
    click.echo(secret)


@tokens.command("list")
@click.pass_context
@reports_errors
def tokens_list(ctx: click.Context) -> None:
    """List tokens (never their secrets)."""
    from rich.table import Table

    table = Table("id", "name", "site", "scopes")
    for token in _service(ctx).state.list_tokens():
        table.add_row(token.id, token.name, token.site or "(all)", ",".join(token.scopes))
    out.print(table)


@tokens.command("delete")
@click.argument("token_id")
@click.pass_context
@reports_errors
def tokens_delete(ctx: click.Context, token_id: str) -> None:
    """Revoke a token by its id (`pushsite tokens list` shows ids); it stops working at once."""
    _service(ctx).delete_token(token_id)


@cli.group()
def notify() -> None:
    """Tell other services about a site's deployments (signed Standard Webhooks, or Slack)."""


@notify.command("add")
@click.argument("site")
@click.argument("url")
@click.option("--events", default="", help="Comma-separated events (default: all): "
              "deployment.queued, .started, .succeeded, .failed, .timed_out, .cancelled, "
              "site.production_changed.")
@click.option("--format", "fmt", type=click.Choice(["standard", "slack"]), default="standard",
              show_default=True, help="standard: the JSON event, signed; slack: {\"text\": ...}.")
@click.pass_context
@reports_errors
def notify_add(ctx: click.Context, site: str, url: str, events: str, fmt: str) -> None:
    """Send SITE's events to URL; prints the endpoint id and its signing secret (once)."""
    chosen = [e.strip() for e in events.split(",") if e.strip()] or None
    endpoint = _service(ctx).add_endpoint(site, url, chosen, fmt)
    click.echo(f"{endpoint.id} {endpoint.secret}")
    err.print(f"{site} tells {endpoint.url} about: {', '.join(endpoint.events)}; verify "
              "deliveries with the secret above (it is not shown again)")


@notify.command("list")
@click.argument("site")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, with the latest "
              "deliveries.")
@click.pass_context
@reports_errors
def notify_list(ctx: click.Context, site: str, as_json: bool) -> None:
    """List SITE's notification endpoints (never their secrets)."""
    service = _service(ctx)
    endpoints = service.list_endpoints(site)
    if as_json:
        for endpoint in endpoints:
            data = endpoint.to_dict()
            data["deliveries"] = [d.to_dict() for d in service.deliveries(site, endpoint.id, 10)]
            click.echo(json.dumps(data))
        return
    from rich.table import Column, Table

    # the id is what `notify remove` takes: never cut, however narrow the terminal
    longest = max((len(endpoint.id) for endpoint in endpoints), default=2)
    table = Table(Column("id", no_wrap=True, min_width=longest), "url", "format", "events",
                  "state")
    for endpoint in endpoints:
        state = ("disabled" if endpoint.disabled else
                 "failing" if endpoint.failing_since else "ok")
        table.add_row(endpoint.id, endpoint.url, endpoint.format, ",".join(endpoint.events),
                      state)
    out.print(table)


@notify.command("remove")
@click.argument("site")
@click.argument("endpoint_id")
@click.pass_context
@reports_errors
def notify_remove(ctx: click.Context, site: str, endpoint_id: str) -> None:
    """Stop telling an endpoint (`pushsite notify list SITE` shows ids)."""
    endpoint = _service(ctx).remove_endpoint(site, endpoint_id)
    err.print(f"{site} no longer tells {endpoint.url}")


@cli.group()
def domains() -> None:
    """Custom domains a site answers on (besides <site>.<base-domain>).

    \b
    A domain is served only once approved. A site's pushsite.toml (`domains = [...]`) claims
    names as pending; an admin approves them here, or their owner proves control with a
    DNS TXT record `_pushsite-challenge.<host>` holding the site's challenge (`domains list`
    shows it) and `domains verify`. IP addresses, localhost and names under the base domain
    are never claimable, and a name one site holds (even pending) no other site may claim.
    """


def _show_claim(claim: Domain) -> None:
    note = "served" if claim.approved else "pending: not served until approved or verified"
    err.print(f"{claim.site}: {claim.host} is {claim.status} ({note})", highlight=False)


@domains.command("add")
@click.argument("site")
@click.argument("host")
@click.option("--pending", is_flag=True, help="Leave it pending (to be proven with `domains "
              "verify`) instead of approving it now.")
@click.pass_context
@reports_errors
def domains_add(ctx: click.Context, site: str, host: str, pending: bool) -> None:
    """Claim HOST for SITE, approved at once (you are the admin here)."""
    _show_claim(_service(ctx).add_domain(site, host, approve=not pending))


@domains.command("approve")
@click.argument("site")
@click.argument("host")
@click.pass_context
@reports_errors
def domains_approve(ctx: click.Context, site: str, host: str) -> None:
    """Approve SITE's pending claim of HOST (made in its pushsite.toml): served from now on."""
    _show_claim(_service(ctx).approve_domain(site, host))


@domains.command("verify")
@click.argument("site")
@click.argument("host")
@click.pass_context
@reports_errors
def domains_verify(ctx: click.Context, site: str, host: str) -> None:
    """Approve SITE's claim of HOST if DNS proves it: a TXT record _pushsite-challenge.HOST
    holding the site's challenge (`pushsite domains list SITE` shows it)."""
    _show_claim(_service(ctx).verify_domain(site, host))


@domains.command("remove")
@click.argument("site")
@click.argument("host")
@click.pass_context
@reports_errors
def domains_remove(ctx: click.Context, site: str, host: str) -> None:
    """Release HOST from SITE."""
    result = _service(ctx).remove_domain(site, host)
    err.print(f"{site} holds: {', '.join(result.domains) or '(no custom domain)'}")


@domains.command("list")
@click.argument("site")
@click.pass_context
@reports_errors
def domains_list(ctx: click.Context, site: str) -> None:
    """List SITE's custom domains with their status, and its DNS challenge."""
    service = _service(ctx)
    for claim in service.domains(site):
        click.echo(f"{claim.host}\t{claim.status}\t{claim.scope}")
    err.print(f"challenge: a TXT record _pushsite-challenge.<host> = "
              f"\"{service.domain_token(site)}\"", highlight=False)


@cli.group("cache")
def cache_group() -> None:
    """A site's build cache (generators' caches and [build] cache, kept between builds)."""


@cache_group.command("clear")
@click.argument("site")
@click.pass_context
@reports_errors
def cache_clear(ctx: click.Context, site: str) -> None:
    """Drop SITE's build caches: the next build starts cold."""
    count = _service(ctx).clear_build_cache(site)
    err.print(f"{site}: cleared the build cache of {count} branch(es)", highlight=False)


@cli.group("env")
def env_group() -> None:
    """Variables a site's builds see (secrets are never shown again, and are redacted from
    build output).

    \b
    Examples:
      pushsite env set blog HUGO_ENV=production
      pushsite env set blog API_KEY=abc123 --secret
      pushsite env list blog
      pushsite env unset blog API_KEY
    """


@env_group.command("set")
@click.argument("site")
@click.argument("assignment", metavar="KEY=VALUE")
@click.option("--secret", is_flag=True, help="Never show the value again; redact it from "
              "build output.")
@click.pass_context
@reports_errors
def env_set(ctx: click.Context, site: str, assignment: str, secret: bool) -> None:
    """Set a variable for SITE's builds."""
    key, equals, value = assignment.partition("=")
    if not equals:
        raise ConfigError(f"write KEY=VALUE, e.g. HUGO_ENV=production (got {assignment!r})")
    shown = _service(ctx).set_variable(site, key, value, secret=secret)
    err.print(f"{site}: {shown['name']} set{' (secret)' if secret else ''}", highlight=False)


@env_group.command("list")
@click.argument("site")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
@reports_errors
def env_list(ctx: click.Context, site: str, as_json: bool) -> None:
    """SITE's build variables (a secret's value shows as ••••)."""
    for variable in _service(ctx).variables(site):
        if as_json:
            click.echo(json.dumps(variable, ensure_ascii=False))
        else:
            click.echo(f"{variable['name']}={variable['value']}")


@env_group.command("unset")
@click.argument("site")
@click.argument("key")
@click.pass_context
@reports_errors
def env_unset(ctx: click.Context, site: str, key: str) -> None:
    """Remove a variable from SITE's builds."""
    _service(ctx).unset_variable(site, key)
    err.print(f"{site}: {key} unset", highlight=False)


@cli.command()
@click.argument("site")
@click.option("--base-url", default=None, help="API base of a self-hosted git host (GitHub "
              "Enterprise, GitLab, Gitea, Forgejo); empty for the public host.")
@click.option("--access-token", default=None, help="Token the server uses to download "
              "archives of private repositories.")
@click.option("--tags/--no-tags", default=None, help="Deploy tag pushes too (as tag/<name>).")
@click.option("--repo", default=None, help="Deploy pushes of this repository only (owner/name; "
              "default: the first valid push binds it; \"\" unbinds).")
@click.option("--server-url", default=None,
              help="How git hosts reach this server, for the printed hook URLs (default: the "
              "public URL of the server running on this home, else the configured one, "
              "PUSHSITE_PUBLIC_URL or http://localhost:8000).")
@click.pass_context
@reports_errors
def hooks(ctx: click.Context, site: str, base_url: str | None, access_token: str | None,
          tags: bool | None, repo: str | None, server_url: str | None) -> None:
    """Show SITE's webhook URLs (GitHub, GitLab, Bitbucket, Gitea, Forgejo) and secret; set
    where its archives are fetched from.

    \b
    Example (GitHub: Settings > Webhooks > Add webhook, content type application/json):
      pushsite hooks blog --access-token ghp_... --server-url https://deploy.example.com
    """
    service = _service(ctx)
    record = service.update_site(site, tags=tags, webhook_base_url=base_url,
                                 webhook_access_token=access_token, webhook_repo=repo)
    from pushsite.sources.webhooks import PROVIDERS

    # _config gave the running server's public URL (its port), else the configured one
    server_url = server_url or service.config.public_url

    for provider in PROVIDERS:
        click.echo(f"{provider:<10} {server_url.rstrip('/')}/hooks/{provider}/{record.name}")
    click.echo(f"secret     {record.webhook_secret}")
    hook = record.settings.webhook
    if hook.base_url:
        click.echo(f"base url   {hook.base_url}")
    click.echo(f"repository {hook.repo or '(not bound yet: the first valid push binds it)'}")
    if hook.last_ignored_repo:
        click.echo(f"ignored    pushes from {hook.last_ignored_repo} (not the bound repository)")


@cli.command()
@click.argument("site")
@click.argument("target")
@click.option("--max-delete", default=None, type=float,
              help="Fail rather than delete more than this share of the mirrored objects "
              "(default PUSHSITE_MIRROR_MAX_DELETE, 0.5).")
@click.option("--full", is_flag=True, help="Compare every object in the bucket instead of "
              "trusting the last mirror's record (after the bucket was changed by hand).")
@click.pass_context
@reports_errors
def mirror(ctx: click.Context, site: str, target: str, max_delete: float | None,
           full: bool) -> None:
    """Write SITE's live deployment as plain files to an S3 bucket (s3://bucket/prefix).

    A mirror remembers what it wrote, so the next one sends only the changes without asking
    the bucket; --full lists and compares the bucket itself.
    """
    from pushsite.aws.mirror import mirror_deployment

    service = _service(ctx)
    alias = service.state.get_alias(service.site(site).name, "production")
    if alias is None:
        from pushsite.errors import NotFound

        raise NotFound(f"site {site} has no live deployment to mirror")
    share = service.config.mirror_max_delete if max_delete is None else max_delete
    report = mirror_deployment(service.manifest(alias.deployment_id), service.store, target,
                               max_delete_share=share, full=full)
    err.print(f"mirrored {site} to {target}: {report.uploaded} uploaded, {report.unchanged} "
              f"unchanged, {report.deleted} deleted, {report.redirects} redirects",
              highlight=False, soft_wrap=True)
    for rule in report.skipped_rules:
        err.print(f"[yellow]not mirrored:[/] {rule} (S3 website hosting cannot express it)",
                  highlight=False)


@cli.command()
@click.option("--base-domain", required=True, help="Sites answer at <site>.<base-domain>.")
@click.option("--email", default="", help="Your address for the certificate authority.")
@click.option("--upstream", default="127.0.0.1:8000", show_default=True,
              help="Where `pushsite serve` listens.")
@click.option("--dashboard-host", default="", help="The control plane's host name "
              "(default the base domain itself).")
@click.option("--http-port", default=80, show_default=True, type=int,
              help="Caddy's plain HTTP port (redirects to HTTPS, ACME challenges).")
@click.option("--https-port", default=443, show_default=True, type=int,
              help="Caddy's HTTPS port.")
@click.option("--acme-ca", default="", help="ACME directory URL (default Caddy's: Let's "
              "Encrypt); e.g. a staging or test CA.")
@click.option("--acme-ca-root", default="", help="PEM file Caddy trusts for --acme-ca.")
@click.option("--admin", default="", help="Caddy's admin endpoint (default localhost:2019).")
@click.option("--storage", default="", help="Folder for Caddy's certificates.")
def caddyfile(base_domain: str, email: str, upstream: str, dashboard_host: str, http_port: int,
              https_port: int, acme_ca: str, acme_ca_root: str, admin: str,
              storage: str) -> None:
    """Print a Caddyfile: Caddy in front of `pushsite serve`, HTTPS for every site.

    \b
    Example:
      pushsite caddyfile --base-domain example.com --email you@example.com > /etc/caddy/Caddyfile
    """
    from pushsite.web.caddyfile import CaddySetup, render

    click.echo(render(CaddySetup(base_domain, email, upstream, dashboard_host, http_port,
                                 https_port, acme_ca, acme_ca_root, admin, storage)), nl=False)


@cli.command("systemd-unit")
@click.option("--user", default="pushsite", show_default=True, help="The service's user.")
@click.option("--home", "home_dir", default="/var/lib/pushsite", show_default=True,
              help="PUSHSITE_HOME of the service.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED)
def systemd_unit(user: str, home_dir: str, serve_args: tuple[str, ...]) -> None:
    """Print a systemd unit running `pushsite serve SERVE_ARGS...`.

    \b
    Example:
      pushsite systemd-unit -- --base-domain example.com --public-url https://example.com \\
        --forwarded-allow-ips 127.0.0.1 > /etc/systemd/system/pushsite.service
    """
    from pushsite.web.systemd import Unit, render

    click.echo(render(Unit((sys.executable, "-m", "pushsite"), serve_args, user, home_dir)),
               nl=False)


@cli.group()
def aws() -> None:
    """Stand pushsite up on AWS: the Lambda package, the CloudFormation stack, its settings.

    \b
    From nothing to a live site: README.md, "Serverless on AWS".
    """


@aws.command("deploy")
@click.option("--stack", required=True, help="The CloudFormation stack's name (also the "
              "prefix of its resources' names).")
@click.option("--code-bucket", default="", help="Bucket for the Lambda zip, created if absent "
              "(default <stack>-code-<account>-<region>).")
@click.option("--zip", "zip_path", default="", help="A zip from `pushsite aws package` "
              "(default: build one now).")
@click.option("--parameter", "parameters", multiple=True, metavar="KEY=VALUE",
              help="A template parameter, e.g. MaxConcurrency=20 (repeatable; an update keeps "
              "the values of those not given).")
@reports_errors
def aws_deploy(stack: str, code_bucket: str, zip_path: str, parameters: tuple[str, ...]) -> None:
    """Upload the Lambda zip and create or update the stack; prints its outputs.

    \b
    Each new zip gets a new key (named by its sha256), so an update always
    reaches the function; running it again with the same zip changes nothing.
    """
    import tempfile
    from pathlib import Path

    from pushsite.aws.package import build_lambda_zip
    from pushsite.aws.stack import deploy_stack
    from pushsite.errors import ConfigError

    values = {}
    for item in parameters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--parameter {item!r}: expected KEY=VALUE")
        values[key] = value
    with tempfile.TemporaryDirectory(prefix="pushsite-aws-") as tmp:
        path = Path(zip_path) if zip_path else build_lambda_zip(Path(tmp) / "lambda.zip")
        result = deploy_stack(stack, zip_path=path, code_bucket=code_bucket, parameters=values)
    err.print(f"stack {stack} {result.action}; code {result.code}"
              f"{'' if result.uploaded else ' (already uploaded)'}", highlight=False)
    for key, value in sorted(result.outputs.items()):
        click.echo(f"{key}\t{value}")


@aws.command("env")
@click.option("--stack", required=True, help="The CloudFormation stack's name.")
@reports_errors
def aws_env(stack: str) -> None:
    """Print `export PUSHSITE_...` lines for the stack's buckets, table and mirror.

    \b
    The commands that read the stack's state (deploys, log, rollback, serve,
    mirror) need them:
      eval "$(pushsite aws env --stack pushsite)"
    """
    import shlex

    from pushsite.aws.stack import stack_env, stack_outputs

    for name, value in stack_env(stack_outputs(stack)).items():
        click.echo(f"export {name}={shlex.quote(value)}")


@aws.command("package")
@click.option("--out", default="pushsite-lambda.zip", show_default=True,
              help="Where to write the zip.")
@click.option("--platform", type=click.Choice(["x86_64", "arm64"]), default="x86_64",
              show_default=True, help="The Lambda architecture.")
@reports_errors
def aws_package(out: str, platform: str) -> None:
    """Build the Lambda zip: this pushsite and its pinned deploy-path dependencies,
    reproducibly (the same pushsite gives the same zip on any day)."""
    from pathlib import Path

    from pushsite.aws.package import build_lambda_zip

    path = build_lambda_zip(Path(out), platform=platform)
    err.print(f"wrote {path} ({human_size(path.stat().st_size)})")


@aws.command("template")
@click.option("--out", default="pushsite-template.json", show_default=True,
              help="Where to write the template.")
@click.option("--prefix", default="pushsite", show_default=True,
              help="Prefix of the stack's resource names.")
@reports_errors
def aws_template(out: str, prefix: str) -> None:
    """Write the CloudFormation template: buckets, queue, table, function, IAM role.

    \b
    `pushsite aws deploy --stack NAME` uploads the code and deploys this in one
    step. By hand (the zip's key must change with each new zip):
      pushsite aws package --out lambda.zip
      key=pushsite-lambda-$(sha256sum lambda.zip | cut -c1-16).zip
      aws s3 cp lambda.zip s3://MY-CODE-BUCKET/$key
      pushsite aws template --out stack.json
      aws cloudformation deploy --template-file stack.json --stack-name pushsite \\
          --capabilities CAPABILITY_IAM \\
          --parameter-overrides CodeS3Bucket=MY-CODE-BUCKET CodeS3Key=$key
    """
    from pathlib import Path

    from pushsite.aws.template import write_template

    path = write_template(Path(out), stack_prefix=prefix)
    err.print(f"wrote {path}")


def main() -> None:
    """The `pushsite` console script.

    A command that sets obj["quick_exit"] (deploy: often a one-shot process in CI) ends the
    process without the interpreter's teardown, which takes ~0.15 s once botocore is loaded:
    a quarter of a one-file deploy to S3. Its backends are closed by then (`_service`).
    """
    from pushsite.launch import plain_remote_deploy, run

    if plain := plain_remote_deploy(sys.argv[1:], os.environ):  # remote.py's quick path
        run(plain)
    obj: dict[str, Any] = {}
    try:
        cli(obj=obj)
    except SystemExit as done:
        if obj.get("quick_exit"):
            _exit_now(done.code)
        raise


def _exit_now(code: int | str | None) -> None:
    """Exit without the interpreter's teardown; output is flushed first."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
