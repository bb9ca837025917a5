"""The layering of DESIGN.md is a checked contract: import-linter's contracts and no cycles."""

from __future__ import annotations

from pathlib import Path

import grimp
import networkx as nx
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_are_kept(monkeypatch) -> None:
    """The contracts in pyproject.toml: layers, config imports nothing, only the bus imports zmq."""
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def _import_graph() -> nx.DiGraph:
    g = grimp.build_graph("p2pgame")
    out = nx.DiGraph()
    for m in g.modules:
        out.add_node(m)
        for d in g.find_modules_directly_imported_by(m):
            out.add_edge(m, d)
    return out


def test_no_import_cycles() -> None:
    """Every import, lazy ones inside functions included: no module reaches itself."""
    cycles = [sorted(c) for c in nx.strongly_connected_components(_import_graph()) if len(c) > 1]
    assert cycles == []


def test_the_cycle_check_would_catch_a_cycle() -> None:
    g = nx.DiGraph([("p2pgame.a", "p2pgame.b"), ("p2pgame.b", "p2pgame.a")])
    assert [len(c) for c in nx.strongly_connected_components(g)] == [2]


def test_only_the_bus_imports_zmq() -> None:
    """Direct imports of zmq, by module (the contract checks the same; this names the rule)."""
    graph = grimp.build_graph("p2pgame", include_external_packages=True)
    importers = sorted(graph.find_modules_that_directly_import("zmq"))
    assert importers and all(m.startswith("p2pgame.bus.") for m in importers), importers
