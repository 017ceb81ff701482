"""`python -m chaos [--quick] [--only ROUNDS] [--seed N]`: run the rounds, print the figures.

Exit status 1 when any round counted a broken site (or could not run), else 0.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from chaos import rounds
from chaos.rounds import Figures

FULL = {"deploys": 30, "prunes": 30, "serve": 30, "races": 20, "shared": 4, "disk": 3}
QUICK = {"deploys": 3, "prunes": 3, "serve": 3, "races": 3, "shared": 1, "disk": 1}
ROUNDS = ("deploys", "prunes", "serve", "races", "races-s3", "shared", "disk")


def run_all(only: tuple[str, ...], counts: dict[str, int], seed: int, root: Path,
            echo: Callable[[str], None] = print) -> list[Figures]:
    """Every round named in `only`, each in a folder of its own under `root`."""
    rng = random.Random(seed)
    plan: dict[str, Callable[[Path], Figures]] = {
        "deploys": lambda at: rounds.deploy_kills(at, counts["deploys"], rng),
        "prunes": lambda at: rounds.prune_kills(at, counts["prunes"], rng),
        "serve": lambda at: rounds.serve_kills(at, counts["serve"], rng),
        "races": lambda at: rounds.prune_races(at, counts["races"], rng),
        "races-s3": lambda at: _on_seaweed(at, counts["races"], rng),
        "shared": lambda at: rounds.shared_state(at, counts["shared"], rng),
        "disk": lambda at: rounds.full_disk(at, counts["disk"], rng),
    }
    results = []
    for name in only:
        echo(f"chaos: {name} ...")
        started = time.monotonic()
        try:
            figures = plan[name](root / name)
        except Exception as exc:  # noqa: BLE001 - the round could not go on: reported
            figures = Figures(name)
            figures.broke(exc)
        figures.seconds = time.monotonic() - started
        echo(f"chaos: {name} done in {figures.seconds:.0f} s, {figures.broken} broken")
        results.append(figures)
    return results


def _on_seaweed(root: Path, count: int, rng: random.Random) -> Figures:
    """The same races with the store on SeaweedFS (tests/support/aws_servers.py starts it)."""
    import os
    import uuid

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.aws_servers import run_seaweed

    for name, value in (("AWS_ACCESS_KEY_ID", "chaos"), ("AWS_SECRET_ACCESS_KEY", "chaos"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    (root / "weed").mkdir(parents=True)
    with run_seaweed(root / "weed") as endpoint:
        store = f"s3://c-{uuid.uuid4().hex[:16]}/site?endpoint={endpoint}&create=1"
        return rounds.prune_races(root / "site", count, rng, store, "SeaweedFS")


def table(results: list[Figures]) -> str:
    head = f"{'round':<34} {'runs':>5} {'kills':>6} {'live':>5} {'failed':>7} " \
           f"{'broken':>7} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for f in results:
        lines.append(f"{f.name:<34} {f.runs:>5} {f.kills:>6} {f.live:>5} {f.failed:>7} "
                     f"{f.broken:>7} {f.seconds:>8.0f}")
    total = sum(f.broken for f in results)
    lines.append(f"broken sites: {total}")
    for f in results:
        lines += [f"  {f.name}: {problem}" for problem in f.problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few iterations of each")
    parser.add_argument("--only", default=",".join(ROUNDS),
                        help=f"comma-separated rounds ({', '.join(ROUNDS)})")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    only = tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = set(only) - set(ROUNDS)
    if unknown:
        parser.error(f"unknown rounds: {', '.join(sorted(unknown))}")
    print(f"chaos: seed {args.seed}")
    with tempfile.TemporaryDirectory(prefix="pushsite-chaos-") as folder:
        results = run_all(only, QUICK if args.quick else FULL, args.seed, Path(folder))
    print(table(results))
    return 1 if any(f.broken for f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
