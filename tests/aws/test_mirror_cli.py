"""`pushsite mirror` as a user runs it: the second run trusts the first one's record (no
request to the bucket when nothing changed), so a bucket changed by hand is repaired only by
`--full`, which lists and compares the bucket itself."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from support.cli import create_site, ok, ok_json, pushsite


@pytest.fixture
def hosting(moto: str) -> tuple[Any, str]:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    bucket = f"hosting-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return s3, f"s3://{bucket}/blog?endpoint={moto}"


def _keys(s3: Any, target: str) -> dict[str, bytes]:
    bucket = target.removeprefix("s3://").split("/", 1)[0]
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listed}


def test_full_repairs_what_was_changed_in_the_bucket_by_hand(
        hosting: tuple[Any, str], make_site: Callable[..., Path]) -> None:
    s3, target = hosting
    bucket = target.removeprefix("s3://").split("/", 1)[0]
    create_site("blog")
    ok("deploy", str(make_site({"index.html": "<h1>home</h1>", "about.txt": "about"})),
       "--site", "blog")
    first = ok("mirror", "blog", target)
    assert "2 uploaded, 0 unchanged" in first.stderr
    s3.delete_object(Bucket=bucket, Key="blog/about.txt")  # by hand, behind the record
    s3.put_object(Bucket=bucket, Key="blog/index.html", Body=b"defaced")

    trusted = ok("mirror", "blog", target)
    assert "0 uploaded, 2 unchanged" in trusted.stderr  # the record says all is there
    assert "blog/about.txt" not in _keys(s3, target)

    full = ok("mirror", "blog", target, "--full")
    assert "2 uploaded, 0 unchanged" in full.stderr
    assert _keys(s3, target) == {"blog/index.html": b"<h1>home</h1>",
                                 "blog/about.txt": b"about"}
    again = ok("mirror", "blog", target, "--full")  # compared object by object: all equal
    assert "0 uploaded, 2 unchanged" in again.stderr


def test_full_still_refuses_to_delete_more_than_the_allowed_share(
        hosting: tuple[Any, str], make_site: Callable[..., Path]) -> None:
    """--full lists the bucket, so objects the record never knew count as deletions too."""
    s3, target = hosting
    bucket = target.removeprefix("s3://").split("/", 1)[0]
    create_site("blog")
    ok("deploy", str(make_site({"index.html": "<h1>home</h1>"})), "--site", "blog")
    ok("mirror", "blog", target)
    for n in range(3):
        s3.put_object(Bucket=bucket, Key=f"blog/stray{n}.txt", Body=b"put there by hand")

    done = pushsite("mirror", "blog", target, "--full")
    assert done.returncode == 2 and "would delete 3 of its 4 objects" in done.stderr
    assert len(_keys(s3, target)) == 4  # nothing changed
    ok("mirror", "blog", target, "--full", "--max-delete", "1")
    assert list(_keys(s3, target)) == ["blog/index.html"]


def test_promote_and_rollback_carry_the_hosting_copy_along(
        hosting: tuple[Any, str], make_site: Callable[..., Path]) -> None:
    """With PUSHSITE_MIRROR set, the hosting copy follows production wherever it moves."""
    s3, target = hosting
    bucket = target.removeprefix("s3://").split("/", 1)[0]
    endpoint = target.partition("?")[2]
    env = {"PUSHSITE_MIRROR": f"s3://{bucket}?{endpoint}"}
    create_site("blog")
    ok("deploy", str(make_site({"index.html": "<h1>one</h1>"})), "--site", "blog", env=env)
    draft = ok_json("deploy", str(make_site({"index.html": "<h1>two</h1>"})), "--site", "blog",
                    "--draft", env=env)

    promoted = ok("promote", draft["id"], env=env)
    assert "mirrored blog: 1 uploaded" in promoted.stderr
    assert _keys(s3, target) == {"blog/index.html": b"<h1>two</h1>"}
    back = ok("rollback", "blog", env=env)
    assert "mirrored blog: 1 uploaded" in back.stderr
    assert _keys(s3, target) == {"blog/index.html": b"<h1>one</h1>"}
