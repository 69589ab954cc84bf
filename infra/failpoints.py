"""Named crash points for fault-injection tests: `TUMOROPS_FAILPOINTS=promote.before_pointer,...`.

A failpoint that is switched on ends the process at once with `os._exit`, exactly as a kill or a power cut
would: no `finally` blocks, no cleanup. Unset in normal operation, where `failpoint()` costs one dict lookup.
"""

from __future__ import annotations

import os
import sys

FAILPOINT_EXIT_CODE = 70
ENV_VAR = "TUMOROPS_FAILPOINTS"


def failpoint(name: str) -> None:
    """Crash here when `name` is listed in TUMOROPS_FAILPOINTS."""
    enabled = os.environ.get(ENV_VAR, "")
    if enabled and name in {item.strip() for item in enabled.split(",")}:
        sys.stderr.write(f"failpoint {name}: crashing on purpose ({ENV_VAR})\n")
        sys.stderr.flush()
        os._exit(FAILPOINT_EXIT_CODE)
