"""The S3-compatible archive sink (the ``ledgerflow[s3]`` extra: boto3).

The endpoint comes from ``LEDGERFLOW_S3_ENDPOINT`` (unset: AWS itself), the
credentials and region from boto3's standard chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles, instance roles).
No credential is ever put in a message or a log line: errors name the bucket,
the key and the endpoint only.

A PUT is answered only once the object is stored whole (S3 has no partial
objects), and it carries the body's MD5 so the server refuses a body damaged on
the way: that is the sink's durability promise.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import os
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from .sink import ArchiveError, check_name

ENDPOINT_ENV = "LEDGERFLOW_S3_ENDPOINT"


class S3Sink:
    """Archives as objects ``<prefix>/<name>`` in one bucket."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint if endpoint is not None else os.environ.get(ENDPOINT_ENV) or None
        self._client: Any = None

    @property
    def where(self) -> str:
        place = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{place} at {self.endpoint}" if self.endpoint else place

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _s3(self) -> Any:
        if self._client is None:
            self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint)
        return self._client

    async def put(self, name: str, data: bytes) -> None:
        key = self._key(check_name(name))
        digest = base64.b64encode(hashlib.md5(data).digest()).decode("ascii")
        await self._call(
            f"put {key}",
            lambda: self._s3().put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentMD5=digest
            ),
        )

    async def get(self, name: str) -> bytes:
        key = self._key(check_name(name))

        def fetch() -> bytes:
            try:
                body = self._s3().get_object(Bucket=self.bucket, Key=key)["Body"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise ArchiveError(f"no archive {name!r} in {self.where}") from None
                raise
            data: bytes = body.read()
            return data

        result: bytes = await self._call(f"get {key}", fetch)
        return result

    async def list(self, prefix: str = "") -> builtins.list[str]:
        start = self._key(prefix)
        skip = len(self._key(""))

        def walk() -> list[str]:
            names: list[str] = []
            pages = self._s3().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=start):
                names.extend(item["Key"][skip:] for item in page.get("Contents", []))
            return sorted(names)

        result: list[str] = await self._call(f"list {start}", walk)
        return result

    async def _call(self, what: str, call: Any) -> Any:
        """Run a blocking boto3 call off the event loop; its errors as ArchiveError."""
        try:
            return await asyncio.to_thread(call)
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveError(f"S3 {what} in {self.where} failed: {exc}") from exc
