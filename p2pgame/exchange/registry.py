"""The exchange registry: ``[exchange] kind`` -> its class (loaded when first named)."""

from __future__ import annotations

import importlib
from typing import Any

from p2pgame.config import ScenarioError

EXCHANGES: dict[str, str] = {
    "samples": "p2pgame.exchange.mixing:Mixing",
    "moments": "p2pgame.exchange.mixing:Moments",
    "params": "p2pgame.exchange.params:Params",
    "model": "p2pgame.exchange.model:ModelExchange",
    "none": "p2pgame.exchange.none:NoExchange",
}


def exchange_class(kind: str) -> Any:
    if kind not in EXCHANGES:
        raise ScenarioError(f"exchange.kind = {kind!r} is not known; allowed: "
                            f"{', '.join(EXCHANGES)}")
    module, _, name = EXCHANGES[kind].partition(":")
    return getattr(importlib.import_module(module), name)
