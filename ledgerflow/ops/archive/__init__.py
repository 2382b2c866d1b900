"""Where archived runs go: the ``ArchiveSink`` protocol and its two sinks.

``runs archive`` (and retention with ``--retention-archive``) writes each run as
one compressed history file and removes the run only once the sink has said the
file is durable; so a sink's ``put`` must not return before the bytes would
survive a crash (the directory sink fsyncs file and directory, S3 answers only
once the object is stored). A directory is the default; ``s3://bucket/prefix``
selects the S3-compatible sink (the ``ledgerflow[s3]`` extra, boto3).

What is written, and when a run is removed, is ``ledgerflow.scheduler.archive``;
this package only stores and fetches bytes, and imports nothing above the core.
"""

from .sink import ArchiveError, ArchiveSink, DirectorySink, archive_name, open_sink

__all__ = ["ArchiveError", "ArchiveSink", "DirectorySink", "archive_name", "open_sink"]
