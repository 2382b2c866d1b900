"""The reference a log entry or a step message carries for a value stored out of line.

Its own module so the codec (which encodes it as an extension value) and the blob
stores (which resolve it) share one definition without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DIGEST_RE: Final = re.compile(r"^[0-9a-f]{64}\Z")
"""A sha256 digest as lowercase hex: the only text a reference may carry."""

MAX_DECLARED_SIZE: Final = 1 << 40
"""What a reference may claim at all; the configured value limit is checked on fetch."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A value stored once, out of the stream: its sha256 (hex) and its encoded size.

    The digest is both the blob's name within its run and the checksum its bytes are
    verified against on every fetch, so a reference can never yield other data.
    """

    digest: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.digest, str) or not DIGEST_RE.match(self.digest):
            raise ValueError("a blob reference's digest must be 64 lowercase hex characters")
        if type(self.size) is not int or not 0 <= self.size <= MAX_DECLARED_SIZE:
            raise ValueError("a blob reference's size must be a non-negative byte count")

    def __repr__(self) -> str:
        return f"<blob sha256:{self.digest[:12]}… {self.size} bytes>"
