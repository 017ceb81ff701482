"""Figure 5: deploying into a real S3-compatible server (SeaweedFS) against `aws s3 sync`.

Both sides start from a fresh checkout (every mtime new, as in CI): the first deploy into an
empty prefix, then a checkout with one HTML file changed. pushsite must upload exactly one
object for the change; `aws s3 sync` compares size and mtime, so it uploads everything again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3

from bench import corpora, measure, product
from bench.corpora import Corpus, scratch_dir
from bench.errors import BenchError
from bench.measure import alternate, summarize
from bench.report import Figure, figure

_CREDS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
    "s3.port.iceberg", "s3.port.lance", "metricsPort", "debug.port",
)  # fmt: skip
BUCKET = "bench"


def missing() -> str:
    """Why the S3 figure cannot run yet, or "" (the store is the PUSHSITE_STORE setting)."""
    return product.missing_command("serve", option="--store")


class Weed:
    """`weed mini` (SeaweedFS: master, volume, filer and S3 in one process) on free ports."""

    def __init__(self, root: Path) -> None:
        ports = {flag: product.free_port() for flag in _PORT_FLAGS}
        self.port = ports["s3.port"]
        weed = Path(sys.executable).with_name("weed")
        argv = [str(weed) if weed.exists() else "weed", "mini", f"-dir={root}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false", "-admin.ui=false",
                "-master.telemetry=false", *(f"-{k}={v}" for k, v in ports.items())]  # fmt: skip
        self.log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        product.wait_port(self.port, self.proc, timeout=60)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.client = boto3.client("s3", endpoint_url=self.endpoint, **_boto_creds())
        for _ in range(50):
            try:
                self.client.create_bucket(Bucket=BUCKET)
                break
            except self.client.exceptions.BucketAlreadyOwnedByYou:
                break
            except Exception:  # noqa: BLE001 - the filer may still be starting
                import time

                time.sleep(0.2)

    def count(self, prefix: str) -> int:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sum(page.get("KeyCount", 0) for page in pages)

    def close(self) -> None:
        product.stop(self.proc, grace=15)
        self.log.close()


def _boto_creds() -> dict[str, str]:
    return {
        "aws_access_key_id": _CREDS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": _CREDS["AWS_SECRET_ACCESS_KEY"],
        "region_name": _CREDS["AWS_DEFAULT_REGION"],
    }


def checkout(bundle: Path) -> Path:
    """A fresh checkout of a bundle's tree: every mtime is now (`tar -m`), no top folder."""
    dest = Path(tempfile.mkdtemp(prefix="checkout-", dir=scratch_dir()))
    subprocess.run(
        ["tar", "xzmf", str(bundle), "-C", str(dest), "--strip-components=1"], check=True
    )
    return dest


def _aws_sync(src: Path, endpoint: str, prefix: str) -> tuple[float, int]:
    aws = Path(sys.executable).with_name("aws")
    cmd = [str(aws), "--endpoint-url", endpoint, "s3", "sync", "--no-progress", str(src),
           f"s3://{BUCKET}/{prefix}/"]  # fmt: skip
    result = measure.run(cmd, env=_CREDS)
    # Exit 2 means files were skipped: the corpus's dangling symlinks (Debian's shared jquery),
    # which pushsite leaves out too.
    skipped_only = result.returncode == 2 and all(
        line.startswith("warning: Skipping") for line in result.stderr.strip().splitlines()
    )
    if result.returncode != 0 and not skipped_only:
        raise BenchError(f"aws s3 sync failed: {result.stderr.strip()[-300:]}")
    uploads = sum(1 for line in result.stdout.splitlines() if line.startswith("upload:"))
    return result.seconds, uploads


def s3(corpus: Corpus, runs: int) -> list[Figure]:
    """First deploy and one-file change, pushsite against `aws s3 sync`, alternating."""
    root = Path(tempfile.mkdtemp(prefix="s3-", dir=scratch_dir()))
    changed = corpora.changed_bundle(corpus, "s3")
    firsts, ones, new_blobs, new_objects, rss = [], [], [], [], []
    base_firsts, base_ones, base_uploads = [], [], []
    weed = Weed(root)
    try:

        def subject() -> None:
            i = len(firsts)
            home = product.fresh_home("s3")
            store = f"s3://{BUCKET}/p{i}?endpoint={weed.endpoint}"
            env = {**_CREDS, "PUSHSITE_STORE": store}
            try:
                for bundle, out in ((corpus.bundle, firsts), (changed, ones)):
                    tree = checkout(bundle)
                    before = weed.count(f"p{i}")
                    try:
                        done = product.deploy(tree, home, env=env)
                    finally:
                        shutil.rmtree(tree, ignore_errors=True)
                    out.append(done.run.seconds)
                    rss.append(done.run.peak_rss_mb)
                    if out is ones:
                        new_blobs.append(int(str(done.doc.get("blobs_new", -1))))
                        new_objects.append(weed.count(f"p{i}") - before)
            finally:
                product.remove(home)

        def baseline() -> None:
            i = len(base_firsts)
            for bundle, out in ((corpus.bundle, base_firsts), (changed, base_ones)):
                tree = checkout(bundle)
                try:
                    seconds, uploads = _aws_sync(tree, weed.endpoint, f"s{i}")
                finally:
                    shutil.rmtree(tree, ignore_errors=True)
                out.append(seconds)
                if out is base_ones:
                    base_uploads.append(uploads)

        alternate(subject, baseline, runs)
    finally:
        weed.close()
        shutil.rmtree(root, ignore_errors=True)
    name = "aws s3 sync"
    return [
        figure("s3_first_deploy", corpus.name, summarize(firsts), "s",
               baseline=summarize(base_firsts), baseline_name=name, target=0.5,
               peak_rss_mb=max(rss)),
        figure("s3_one_file_change", corpus.name, summarize(ones), "s",
               baseline=summarize(base_ones), baseline_name=name, target=0.1,
               peak_rss_mb=max(rss),
               note=f"blobs_new {new_blobs}, new objects in the prefix {new_objects}, "
                    f"aws uploads {base_uploads}"),
        figure("s3_one_file_blobs_new", corpus.name,
               summarize([float(n) for n in new_blobs]), "blobs", target=1.0,
               target_of="value", target_op="=="),
    ]  # fmt: skip
