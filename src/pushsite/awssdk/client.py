"""boto3 clients built one way for every AWS backend, and botocore errors mapped at one edge.

A backend URL carries its own settings in the query string:

    s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=eu-west-1&create=1

`endpoint` falls back to AWS_ENDPOINT_URL_<SERVICE> (e.g. AWS_ENDPOINT_URL_S3), then to
AWS_ENDPOINT_URL, as boto3 itself would; `region` to AWS_REGION /
AWS_DEFAULT_REGION and then us-east-1. `create=1` lets a backend create its bucket, table or
queue when absent (handy for tests and first runs; production infrastructure comes from the
template). Retries use botocore's "standard" mode, which backs off on throttling and 5xx.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from pushsite.awssdk import models as awsmodels
from pushsite.errors import BackendUnavailable, ConfigError

DEFAULT_REGION = "us-east-1"
MAX_ATTEMPTS = 5
POOL_SIZE = 32

_THROTTLING = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "SlowDown",
    "RequestThrottled",
    "LimitExceededException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
}
_MISCONFIGURED = {
    "AccessDenied",
    "AccessDeniedException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "NoSuchBucket",
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
}


@dataclass(frozen=True)
class BackendUrl:
    """The parts of an AWS backend URL: `scheme://name/prefix?endpoint=...&region=...`."""

    scheme: str
    name: str  # bucket, table or queue
    path: str  # the key prefix (s3) or "" ; no leading or trailing slash
    endpoint: str | None  # from the URL only; make_client falls back to the environment
    region: str
    create: bool
    options: dict[str, str]

    @classmethod
    def parse(cls, url: str, scheme: str) -> BackendUrl:
        parts = urlsplit(url)
        if parts.scheme != scheme or not parts.netloc:
            raise ConfigError(
                f"invalid backend URL {url!r}: expected {scheme}://NAME[/PREFIX][?endpoint=URL]"
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        endpoint = query.pop("endpoint", "") or None  # the environment is read in make_client
        region = (
            query.pop("region", "")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )
        create = query.pop("create", "0").lower() in ("1", "true", "yes")
        return cls(
            scheme=scheme,
            name=parts.netloc,
            path=parts.path.strip("/"),
            endpoint=endpoint,
            region=region,
            create=create,
            options=query,
        )

    def int_option(self, name: str, default: int) -> int:
        """A numeric query option such as `?workers=16`; ConfigError when not a number."""
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(
                f"invalid {name}={raw!r} in {self.scheme}://{self.name}: use a whole number"
            ) from None


def make_client(service: str, target: BackendUrl, pool_size: int = POOL_SIZE,
                transfer: bool = False) -> Any:
    """A thread-safe low-level client from a fresh session whose model files are cached
    (awsmodels).

    botocore's own client unless `transfer` asks for boto3's (which adds upload_fileobj):
    importing boto3 brings s3transfer too, 0.1 s of a 0.5 s one-file deploy to S3.

    With a custom endpoint (an S3-compatible server, moto), S3 uses path-style addresses
    (`?addressing=virtual` to change it) and checksums only where the API requires them, as
    many S3-compatible servers reject botocore's default CRC32 trailers.
    """
    endpoint = (
        target.endpoint
        or os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    extra: dict[str, Any] = {}
    if endpoint:
        extra = {
            "s3": {"addressing_style": target.options.get("addressing", "path")},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
    config = Config(
        region_name=target.region,
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        max_pool_connections=pool_size,
        connect_timeout=5,
        read_timeout=60,
        **extra,
    )
    try:
        session = awsmodels.session()
        if transfer:
            import boto3

            return boto3.session.Session(botocore_session=session).client(
                service, endpoint_url=endpoint, config=config)
        return session.create_client(service, endpoint_url=endpoint, config=config)
    except (NoRegionError, ValueError) as exc:
        raise ConfigError(f"cannot build the {service} client for {target.name!r}: {exc}") from exc


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def translate(exc: Exception, what: str) -> Exception:
    """The pushsite error for a botocore failure; `what` names the resource for the message."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ConfigError(
            f"no AWS credentials for {what}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or an AWS profile"
        )
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _MISCONFIGURED or http_status(exc) == 403:
            return ConfigError(
                f"{what} refused the request ({code}): check that it exists and that the "
                "credentials may use it"
            )
        status = http_status(exc)
        if code in _THROTTLING or status >= 500 or status == 429:
            return BackendUnavailable(
                f"{what} is unavailable or throttling ({code or status}) after "
                f"{MAX_ATTEMPTS} attempts: try again shortly"
            )
        return BackendUnavailable(f"{what} failed ({code or status}): {exc}")
    if isinstance(exc, ConnectionError | HTTPClientError):
        return BackendUnavailable(f"cannot reach {what} ({exc}): check the endpoint and network")
    if isinstance(exc, BotoCoreError):
        return BackendUnavailable(f"{what} failed: {exc}")
    return exc


@contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Re-raise botocore errors as pushsite errors, chaining the original."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise translate(exc, what) from exc
