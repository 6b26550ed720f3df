"""Patches to Faust, quarantined: each module corrects one behaviour of
faust-streaming (or of the embedded broker as Faust sees it), says which, and names
the test that shows it.

* ``offsets`` — commits never pass a record that was not processed (rebalances).
* ``flush`` — a commit never passes a table write still waiting to be sent.
* ``fetch`` — the worker's fetch wait is a setting, not a hard-coded 1.5 s.
* ``recovery`` — table recovery reads each changelog to its true end.
* ``fence`` — a table is written only by a member of the current consumer generation.

All are pinned to one Faust release: ``require_patched_faust`` refuses any other, so
an upgrade fails at start instead of running with a patch that no longer fits.
"""

from __future__ import annotations

import faust

#: The faust-streaming release every patch here was checked against (pyproject.toml pins it).
PATCHED_FOR = "0.15.3"


def require_patched_faust(module: str) -> None:
    """Refuse to patch a Faust release the patch was not checked against."""
    if faust.__version__ != PATCHED_FOR:
        raise RuntimeError(
            f"{module} patches faust-streaming {PATCHED_FOR}, found "
            f"{faust.__version__}: re-check the patch against the new release"
        )
