"""The chaos rounds of issue 13, each a function of (a fresh folder, a count, a random source)
that returns its figures. Every round ends with the checks of parts.py; a failed check is
counted as a broken site and the round goes on from where it is."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaos.parts import (
    SITE,
    ChaosFailure,
    Home,
    Serve,
    check,
    finish,
    kill_at_random,
    settle,
    version_files,
    write_folder,
)


@dataclass
class Figures:
    """One round's counts, a row of the summary table."""

    name: str
    runs: int = 0
    kills: int = 0
    live: int = 0  # deploys that exited 0
    failed: int = 0  # deploys that exited non-zero (a kill of their server, a full disk)
    broken: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def broke(self, exc: BaseException) -> None:
        self.broken += 1
        self.problems.append(f"{type(exc).__name__}: {exc}"[-3000:])


def _deployed_id(output: str) -> str:
    return str(json.loads(output)["id"])


def _new_home(root: Path, **extra: str) -> Home:
    home = Home(root, dict(extra))
    home.path.mkdir(parents=True, exist_ok=True)
    home.run("sites", "create", SITE)
    return home


def _in_process_check(home: Home, expected_id: str | None) -> None:
    """Cheaper than `check` for every kill: verify, and production's manifest against the
    files of its version (hashes), no older than `expected_id`."""
    service = home.service()
    try:
        problems = service.verify()
        if problems:
            raise ChaosFailure(f"verify: {problems[:3]}")
        alias = service.state.get_alias(SITE, "production")
        if alias is None:
            return
        if expected_id is not None and alias.deployment_id < expected_id:
            raise ChaosFailure(f"production is {alias.deployment_id}, older than "
                               f"{expected_id}, which went live")
        deployment = service.state.get_deployment(alias.deployment_id)
        files = version_files(int(deployment.message.removeprefix("v")))
        manifest = service.manifest(deployment.id)
        got = {path: entry.hash for path, entry in manifest.files.items()}
        want = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
        if got != want:
            raise ChaosFailure(f"production's manifest differs from {deployment.message}")
    finally:
        service.close()


def _final(home: Home, figures: Figures, expected_id: str | None,
           serve: Serve | None = None) -> None:
    try:
        settle(home)
        _in_process_check(home, expected_id)
        check(home, None, serve)
    except ChaosFailure as exc:
        figures.broke(exc)


def deploy_kills(root: Path, count: int, rng: random.Random) -> Figures:
    """`pushsite deploy` killed with SIGKILL at random moments (process start to alias)."""
    figures = Figures("kill -9 pushsite deploy")
    home = _new_home(root)
    last = _deployed_id(home.run(*home.deploy_args(0), "--json").stdout)
    version = 0
    while figures.kills < count:
        version += 1
        process = home.start(*home.deploy_args(version), "--json")
        figures.runs += 1
        if kill_at_random(process, rng, 0.3, 1.4):
            figures.kills += 1
        elif (ended := finish(process)).code == 0:
            figures.live += 1
            last = _deployed_id(ended.out)
        else:
            figures.failed += 1
        try:
            _in_process_check(home, last)
        except ChaosFailure as exc:
            figures.broke(exc)
    _final(home, figures, last)
    return figures


def prune_kills(root: Path, count: int, rng: random.Random) -> Figures:
    """`pushsite prune --keep 1` (grace 0) killed at random moments between deploys."""
    figures = Figures("kill -9 pushsite prune")
    home = _new_home(root)
    last = None
    version = 0
    while figures.kills < count:
        for _ in range(2):
            version += 1
            last = _deployed_id(home.run(*home.deploy_args(version), "--json").stdout)
            figures.live += 1
        process = home.start("prune", SITE, "--keep", "1")
        figures.runs += 1
        if kill_at_random(process, rng, 0.3, 1.0):
            figures.kills += 1
        elif (ended := finish(process)).code != 0:
            figures.broke(ChaosFailure(f"pushsite prune failed: {ended.err[-300:]}"))
        try:
            _in_process_check(home, last)
        except ChaosFailure as exc:
            figures.broke(exc)
    home.run("prune", SITE, "--keep", "1")
    _final(home, figures, last)
    return figures


def serve_kills(root: Path, count: int, rng: random.Random) -> Figures:
    """`pushsite serve` killed at random moments of remote deploys (`deploy --server`) and
    started again on its port; its own recovery resumes or fails what was cut off."""
    figures = Figures("kill -9 pushsite serve")
    home = _new_home(root)
    token = home.run("tokens", "create", "--name", "chaos").stdout.strip()
    serve = Serve(home).start()
    last = None
    try:
        version = 0
        while figures.kills < count:
            version += 1
            process = home.start(*home.deploy_args(version, "--json", "--server", serve.url,
                                                   "--token", token))
            figures.runs += 1
            moment = time.monotonic() + rng.uniform(0.1, 1.2)
            while time.monotonic() < moment and process.poll() is None:
                time.sleep(0.005)
            if process.poll() is None:  # mid-deploy: kill the server under it
                serve.kill()
                figures.kills += 1
            ended = finish(process)
            if ended.code == 0:
                figures.live += 1
                last = _deployed_id(ended.out)
            else:
                figures.failed += 1
            if serve.process is None or serve.process.poll() is not None:
                serve.start()
        _final(home, figures, last, serve)
    finally:
        serve.stop()
    return figures


def prune_races(root: Path, count: int, rng: random.Random, store: str = "",
                label: str = "local store") -> Figures:
    """A deploy that reuses the blobs only a dropped deployment holds, and a prune that drops
    it, started at nearly the same moment as separate processes, in either order."""
    figures = Figures(f"prune racing deploys ({label})")
    home = _new_home(root, **({"PUSHSITE_STORE": store} if store else {}))
    last = None
    for n in range(count):
        old, newer = 2 * n + 1, 2 * n + 2
        home.run(*home.deploy_args(old))
        home.run(*home.deploy_args(newer))
        racing = home.start(*home.deploy_args(old, "--json"))  # old's files, again
        time.sleep(rng.uniform(0, 0.6))
        prune = home.start("prune", SITE, "--keep", "1")
        figures.runs += 1
        pruned = finish(prune)
        if pruned.code != 0:
            figures.broke(ChaosFailure(f"prune: {pruned.err[-300:]}"))
        raced = finish(racing)
        if raced.code == 0:
            figures.live += 1
            last = _deployed_id(raced.out)
        else:  # a deploy may fail only with a clear reason: counted, and shown
            figures.failed += 1
            figures.problems.append(f"race {n}: the deploy failed: {raced.err[-300:]}")
        try:
            _in_process_check(home, last)
        except ChaosFailure as exc:
            figures.broke(exc)
    _final(home, figures, last)
    return figures


def shared_state(root: Path, count: int, rng: random.Random) -> Figures:
    """Two `serve`s on one home and a CLI deploy beside them; each round every one of the
    three is killed mid-deploy and started again (the CLI deploy is run again to its end)."""
    figures = Figures("2 serve + CLI on one state")
    home = _new_home(root)
    token = home.run("tokens", "create", "--name", "chaos").stdout.strip()
    serves = [Serve(home).start(), Serve(home).start()]
    last = None
    try:
        version = 0
        for _ in range(count):
            started = []
            for serve in serves:
                version += 1
                started.append(home.start(*home.deploy_args(
                    version, "--json", "--server", serve.url, "--token", token)))
            version += 1
            local = home.start(*home.deploy_args(version, "--json"))
            figures.runs += 3
            for serve in serves:
                time.sleep(rng.uniform(0.1, 0.8))
                serve.kill()
                figures.kills += 1
                serve.start()
            if kill_at_random(local, rng, 0.0, 0.5):
                figures.kills += 1
            for process in started:
                if finish(process).code == 0:
                    figures.live += 1
                else:
                    figures.failed += 1
            finish(local)
            again = home.run(*home.deploy_args(version, "--json"), ok=False)  # newest of all
            if again.returncode == 0:
                figures.live += 1
                last = _deployed_id(again.stdout)
            else:
                figures.broke(ChaosFailure(f"the CLI deploy run again: {again.stderr[-300:]}"))
            try:
                _in_process_check(home, last)
            except ChaosFailure as exc:
                figures.broke(exc)
        _final(home, figures, last, serves[0])
    finally:
        for serve in serves:
            serve.stop()
    return figures


def full_disk(root: Path, count: int, rng: random.Random, size: str = "8m") -> Figures:
    """The home on a small tmpfs: a deploy that fills it exits 7 with one line and ends
    failed; prune works on the full disk; a deploy killed while filling it leaves no
    temporary files once the store opens again; the live site serves on."""
    figures = Figures(f"full disk (tmpfs {size})")
    mount = root / "disk"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                   check=True)
    try:
        home = Home(mount, {})
        home.path.mkdir()
        home.run("sites", "create", SITE)
        last = _deployed_id(home.run(*home.deploy_args(1), "--json").stdout)
        for n in range(count):
            big = write_folder(root / f"big{n}", {
                f"blob{i}.bin": rng.randbytes(3 << 20) for i in range(4)})
            figures.runs += 1
            done = home.run("deploy", str(big), "--site", SITE, "-m", "v1", ok=False)
            lines = done.stderr.strip().splitlines()
            if done.returncode != 7 or len(lines) != 1 or "no space left" not in lines[0]:
                figures.broke(ChaosFailure(f"a filling deploy exited {done.returncode}: "
                                           f"{done.stderr[-300:]}"))
            else:
                figures.failed += 1
            process = home.start("deploy", str(big), "--site", SITE, "-m", "v1")
            if kill_at_random(process, rng, 0.3, 1.0):
                figures.kills += 1
            else:
                finish(process)
            filler = _fill(home.path)
            try:
                home.run("prune", SITE, "--keep", "1")  # on the full disk
            except ChaosFailure as exc:
                figures.broke(exc)
            filler.unlink()
            home.run("verify")  # opens the store: a killed deploy's temporary files go
            left = list((home.path / "store" / "tmp").iterdir())
            if left:
                figures.broke(ChaosFailure(f"{len(left)} temporary files left in store/tmp"))
        _final(home, figures, last)
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    return figures


def _fill(home: Path) -> Path:
    """Fill the file system holding `home` to the last byte; the file (remove it to free)."""
    filler = home / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    out.write(bytes(size))
            except OSError as exc:
                if exc.errno != 28:
                    raise
    return filler
