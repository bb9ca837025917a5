"""p2pgame: an asyncio peer-to-peer simulator of generative-model learning.

The Python API (README, "Python API"): ``p2pgame.run(scenario, set=..., out=...)`` runs a
scenario (a file, TOML text or a dict) and returns a :class:`~p2pgame.api.RunResult`;
``p2pgame.load(run_dir)`` reads a finished run folder into the same object.  They are
imported on first use (:mod:`p2pgame.api`), so ``import p2pgame`` stays cheap.
"""

# (No ``from __future__`` import: tests/integration/test_same_code.py puts code before
# this file's own in a copy of the package.)
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from p2pgame.api import RunResult, load, run

__all__ = ["run", "load", "RunResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from p2pgame import api

        return getattr(api, name)
    raise AttributeError(f"module 'p2pgame' has no attribute {name!r}")
