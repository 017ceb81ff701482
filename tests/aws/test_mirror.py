"""Mirroring a deployment into a plain bucket, against a real S3 server (moto's, SeaweedFS)."""

from __future__ import annotations

import gzip
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from pushsite.aws import mirror
from pushsite.aws.mirror import mirror_deployment
from pushsite.deploy import encode
from pushsite.deploy.siteconfig import parse_headers, parse_redirects
from pushsite.errors import ConfigError
from pushsite.model import FileEntry, Manifest, blob_key
from pushsite.stores import ObjectStore, open_object_store
from pushsite.stores.local import LocalStore

PAGE = b"<!doctype html><title>Home</title>" + b"<p>hello pushsite</p>" * 50
CSS = b"body { color: #333; margin: 0 auto; }\n" * 40
PNG = bytes(range(256)) * 8  # not compressible: stored and mirrored as is

HEADERS = """
/*
  Cache-Control: public, max-age=60
  X-Frame-Options: DENY
/assets/*
  Cache-Control: public, max-age=31536000, immutable
"""

REDIRECTS = """
/old /about/ 301
/docs/* /guide/:splat 301
/moved https://example.com/moved 302
/index.html /elsewhere 301
/about/ /never 301!
/gone /about/
/self/ /self 301
"""


class Site:
    """A deployment built the way the deployer stores one: blobs and variants in a store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.files: dict[str, bytes] = {}
        self.headers = parse_headers(HEADERS)
        self.redirects: list[dict[str, Any]] = []

    def add(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def manifest(self) -> Manifest:
        entries = {}
        for path, data in self.files.items():
            digest = hashlib.sha256(data).hexdigest()
            media = encode.media_type(path)
            variants = encode.variants(data, media)
            self.store.put(blob_key(digest), data)
            for name, variant in variants.items():
                self.store.put(blob_key(digest, name), variant)
            sizes = {name: len(variant) for name, variant in variants.items()}
            entries[path] = FileEntry(digest, len(data), media, sizes)
        self.store.flush()
        return Manifest(
            deployment_id=uuid.uuid4().hex,
            site="blog",
            created=0.0,
            files=entries,
            headers=self.headers,
            redirects=self.redirects,
        )


class Recorder:
    """A real boto3 client that remembers the order of writes and lists in pages of two."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_object(self, **kwargs: Any) -> Any:
        self.writes.append(kwargs["Key"])
        return self._client.put_object(**kwargs)

    def upload_fileobj(self, stream: Any, bucket: str, key: str, **kwargs: Any) -> Any:
        self.writes.append(key)
        return self._client.upload_fileobj(stream, bucket, key, **kwargs)

    def get_paginator(self, operation: str) -> Any:
        paginator = self._client.get_paginator(operation)

        class Small:
            def paginate(self, **kwargs: Any) -> Any:
                return paginator.paginate(**kwargs, PaginationConfig={"PageSize": 2})

        return Small()


@pytest.fixture(params=["moto", "seaweed"])
def endpoint(request: pytest.FixtureRequest) -> str:
    if request.param == "moto":
        return str(request.getfixturevalue("moto"))
    return str(request.getfixturevalue("seaweed_server"))


@pytest.fixture
def s3(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )  # fmt: skip


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"mirror-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    store = LocalStore.from_url(f"file://{tmp_path / 'store'}")
    try:
        built = Site(store)
        built.add("index.html", PAGE)
        built.add("about/index.html", PAGE.replace(b"Home", b"About"))
        built.add("assets/site.css", CSS)
        built.add("assets/logo.png", PNG)
        yield built
    finally:
        store.close()


def _target(bucket: str, endpoint: str) -> str:
    return f"s3://{bucket}/www?endpoint={endpoint}"


def _keys(s3: Any, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_files_land_at_their_paths_with_type_encoding_and_cache_control(
    site: Site, s3: Any, bucket: str, endpoint: str
) -> None:
    report = mirror_deployment(site.manifest(), site.store, _target(bucket, endpoint))

    assert (report.uploaded, report.unchanged, report.deleted) == (4, 0, 0)
    assert _keys(s3, bucket) == {
        "www/index.html", "www/about/index.html", "www/assets/site.css", "www/assets/logo.png",
    }  # fmt: skip
    page = s3.get_object(Bucket=bucket, Key="www/index.html")
    body = page["Body"].read()
    assert page["ContentEncoding"] == "gzip"
    assert page["ContentType"] == "text/html; charset=utf-8"
    assert page["CacheControl"] == "public, max-age=60"
    assert gzip.decompress(body) == PAGE
    assert page["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert page["Metadata"]["source-sha256"] == hashlib.sha256(PAGE).hexdigest()
    css = s3.head_object(Bucket=bucket, Key="www/assets/site.css")
    # Both rules match an asset; the rules engine joins a repeated header, as the edge sends it.
    assert css["CacheControl"] == "public, max-age=60, public, max-age=31536000, immutable"
    assert css["ContentType"].startswith("text/css")
    logo = s3.get_object(Bucket=bucket, Key="www/assets/logo.png")
    assert "ContentEncoding" not in logo
    assert logo["ContentType"] == "image/png"
    assert logo["Body"].read() == PNG
    assert report.bytes_uploaded == sum(len(v) for v in [body, PNG]) + sum(
        len(s3.get_object(Bucket=bucket, Key=f"www/{k}")["Body"].read())
        for k in ("about/index.html", "assets/site.css")
    )
    assert any("X-Frame-Options" in line for line in report.skipped_rules)


def test_second_mirror_uploads_nothing_and_one_change_uploads_one(
    site: Site, s3: Any, bucket: str, endpoint: str
) -> None:
    target = _target(bucket, endpoint)
    mirror_deployment(site.manifest(), site.store, target)

    again = mirror_deployment(site.manifest(), site.store, target)
    assert (again.uploaded, again.unchanged, again.deleted, again.bytes_uploaded) == (0, 4, 0, 0)

    site.add("assets/site.css", CSS + b"p { color: red; }\n")
    changed = mirror_deployment(site.manifest(), site.store, target)
    assert (changed.uploaded, changed.unchanged, changed.deleted) == (1, 3, 0)
    body = s3.get_object(Bucket=bucket, Key="www/assets/site.css")["Body"].read()
    assert gzip.decompress(body).endswith(b"color: red; }\n")


def test_a_new_header_rule_rewrites_the_objects_it_covers(
    site: Site, s3: Any, bucket: str, endpoint: str
) -> None:
    target = _target(bucket, endpoint)
    mirror_deployment(site.manifest(), site.store, target)
    site.headers = parse_headers(HEADERS + "/about/\n  Content-Language: de\n")

    report = mirror_deployment(site.manifest(), site.store, target)

    assert (report.uploaded, report.unchanged) == (1, 3)
    about = s3.head_object(Bucket=bucket, Key="www/about/index.html")
    assert about["ContentLanguage"] == "de"


def test_removed_files_are_deleted_last_and_listing_follows_every_page(
    site: Site, s3: Any, bucket: str, endpoint: str
) -> None:
    target = _target(bucket, endpoint)
    mirror_deployment(site.manifest(), site.store, target)
    s3.put_object(Bucket=bucket, Key="outside/keep.txt", Body=b"not under the prefix")
    del site.files["assets/logo.png"]
    site.add("assets/new.js", b"console.log('new');\n" * 20)
    client = Recorder(s3)

    report = mirror_deployment(site.manifest(), site.store, target, s3_client=client)

    assert (report.uploaded, report.unchanged, report.deleted) == (1, 3, 1)
    assert client.writes == ["www/assets/new.js"]
    assert "www/assets/logo.png" not in _keys(s3, bucket)
    assert "outside/keep.txt" in _keys(s3, bucket)


def test_new_assets_are_uploaded_before_html(
    site: Site, s3: Any, bucket: str, endpoint: str
) -> None:
    client = Recorder(s3)
    site.redirects = parse_redirects("/old /about/ 301\n")

    mirror_deployment(site.manifest(), site.store, _target(bucket, endpoint), s3_client=client)

    html = {"www/index.html", "www/about/index.html", "www/old", "www/old/index.html"}
    first_html = min(i for i, key in enumerate(client.writes) if key in html)
    assert set(client.writes[:first_html]) == {"www/assets/site.css", "www/assets/logo.png"}
    assert set(client.writes[first_html:]) == html


def test_deleting_more_than_the_allowed_share_fails_before_any_change(
    site: Site, s3: Any, bucket: str, endpoint: str
) -> None:
    target = _target(bucket, endpoint)
    mirror_deployment(site.manifest(), site.store, target)
    before = _keys(s3, bucket)
    for path in ("about/index.html", "assets/site.css", "assets/logo.png"):
        del site.files[path]
    site.add("index.html", b"<p>almost empty</p>")

    with pytest.raises(ConfigError, match=r"delete 3 of its 4 objects \(75%\).*50%"):
        mirror_deployment(site.manifest(), site.store, target)
    assert _keys(s3, bucket) == before
    old = s3.get_object(Bucket=bucket, Key="www/index.html")["Body"].read()
    assert gzip.decompress(old) == PAGE

    report = mirror_deployment(site.manifest(), site.store, target, max_delete_share=0.8)
    assert (report.uploaded, report.deleted) == (1, 3)
    assert _keys(s3, bucket) == {"www/index.html"}


def test_large_files_are_streamed_with_the_same_metadata(
    site: Site, s3: Any, bucket: str, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror, "STREAM_ABOVE", 1000)
    target = _target(bucket, endpoint)

    mirror_deployment(site.manifest(), site.store, target)

    logo = s3.get_object(Bucket=bucket, Key="www/assets/logo.png")
    assert logo["Body"].read() == PNG
    assert logo["Metadata"]["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert mirror_deployment(site.manifest(), site.store, target).uploaded == 0


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_delete_share_outside_zero_to_one_is_a_config_error(site: Site, share: float) -> None:
    with pytest.raises(ConfigError, match="max_delete_share"):
        mirror_deployment(site.manifest(), site.store, "s3://b/p", max_delete_share=share)


# SeaweedFS drops x-amz-website-redirect-location (it has no website hosting); moto keeps it.
@pytest.mark.parametrize("endpoint", ["moto"], indirect=True)
def test_plain_301_rules_become_redirect_objects_and_others_are_reported(
    site: Site, s3: Any, bucket: str, endpoint: str
) -> None:
    site.redirects = parse_redirects(REDIRECTS)
    target = _target(bucket, endpoint)

    report = mirror_deployment(site.manifest(), site.store, target)

    # "/old" and "/gone" (301 by default) get objects for both spellings; "/about/ ... 301!"
    # is forced, so its objects replace the page at about/index.html.
    assert report.redirects == 3
    for key, location in [
        ("www/old", "/www/about/"),
        ("www/old/index.html", "/www/about/"),
        ("www/gone", "/www/about/"),
        ("www/about/index.html", "/www/never"),
        ("www/about", "/www/never"),
    ]:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["WebsiteRedirectLocation"] == location, key
    skipped = "\n".join(report.skipped_rules)
    assert "line 3: /docs/* /guide/:splat 301 skipped: it has a splat" in skipped
    assert "line 4: /moved https://example.com/moved 302 skipped: its status is 302" in skipped
    assert "line 5: /index.html /elsewhere 301 skipped: the file index.html shadows it" in skipped
    assert "line 8: /self/ /self 301 skipped: it points at its own path" in skipped
    assert "WebsiteRedirectLocation" not in s3.head_object(Bucket=bucket, Key="www/index.html")
    assert "www/self" not in _keys(s3, bucket)

    again = mirror_deployment(site.manifest(), site.store, target)
    assert again.uploaded == 0

    site.redirects = parse_redirects("/old https://example.org/new 301\n")
    moved = mirror_deployment(site.manifest(), site.store, target, max_delete_share=1.0)
    head = s3.head_object(Bucket=bucket, Key="www/old")
    assert head["WebsiteRedirectLocation"] == "https://example.org/new"
    # Rewritten: both "/old" objects, and about/index.html, which is a page again.
    # Deleted: www/gone, www/gone/index.html and www/about.
    assert (moved.uploaded, moved.deleted) == (3, 3)
    assert "WebsiteRedirectLocation" not in s3.head_object(
        Bucket=bucket, Key="www/about/index.html"
    )


def test_missing_bucket_is_a_config_error_naming_it(site: Site, endpoint: str) -> None:
    with pytest.raises(ConfigError, match="no-such-bucket-here"):
        mirror_deployment(site.manifest(), site.store, _target("no-such-bucket-here", endpoint))


def test_an_object_deleted_between_listing_and_head_is_uploaded_again(
    site: Site, s3: Any, bucket: str, endpoint: str
) -> None:
    target = _target(bucket, endpoint)
    mirror_deployment(site.manifest(), site.store, target)

    class DeletesBeforeHead(Recorder):
        def head_object(self, **kwargs: Any) -> Any:
            if kwargs["Key"] == "www/assets/logo.png":
                self._client.delete_object(**kwargs)
            return self._client.head_object(**kwargs)

    report = mirror_deployment(
        site.manifest(), site.store, target, s3_client=DeletesBeforeHead(s3), full=True
    )

    assert (report.uploaded, report.unchanged) == (1, 3)
    assert s3.get_object(Bucket=bucket, Key="www/assets/logo.png")["Body"].read() == PNG


def test_source_may_be_any_object_store(
    seaweed_url: str, moto: str, tmp_path: Path
) -> None:
    """Blobs read from an S3 store on SeaweedFS, mirrored into a bucket on moto."""
    source = open_object_store(seaweed_url)
    try:
        site = Site(source)
        site.add("index.html", PAGE)
        site.add("assets/logo.png", PNG)
        s3 = boto3.session.Session().client("s3", endpoint_url=moto, region_name="us-east-1")
        s3.create_bucket(Bucket="hosting")

        report = mirror_deployment(site.manifest(), source, f"s3://hosting?endpoint={moto}")

        assert report.uploaded == 2
        page = s3.get_object(Bucket="hosting", Key="index.html")
        assert gzip.decompress(page["Body"].read()) == PAGE
        assert s3.get_object(Bucket="hosting", Key="assets/logo.png")["Body"].read() == PNG
    finally:
        source.close()
