"""Decoded payloads as JSON values the page can show: the PAGE rendering of eventlog.jsonview.

Everything the API sends (event data, arguments, results, message bodies) goes
through ``to_json``, so the API never fails on a payload and the browser never
has to guess; the walk itself is the one JSON view of event data.
"""

from __future__ import annotations

from ledgerflow.eventlog.jsonview import BYTES_PREVIEW, MAX_DEPTH, JsonValue
from ledgerflow.eventlog.jsonview import page_view as to_json

__all__ = ["BYTES_PREVIEW", "MAX_DEPTH", "JsonValue", "to_json"]
