"""An APP module that fails while being imported, as a misconfigured application does.

The CLI must report it as one line naming the module (exit 2), not a traceback,
and with the escape sequence in the message shown escaped, not run.
"""

from __future__ import annotations

raise RuntimeError("this app refuses to load:\x1b[2J\rLEDGERFLOW_TEST_SETTING is not set")
