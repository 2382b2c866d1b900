"""A class only the test process imports: the CLI subprocess sees it as unknown."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Parcel:
    weight: int
    tags: tuple[str, ...]
