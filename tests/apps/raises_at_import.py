"""An APP module that fails while being imported, as a misconfigured application does.

The CLI must report it as one line naming the module (exit 2), not a traceback.
"""

from __future__ import annotations

raise RuntimeError("this app refuses to load: LEDGERFLOW_TEST_SETTING is not set")
