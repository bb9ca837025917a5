"""Scenario fuzz (issue 22): mutants of the shipped scenarios either resolve, with every
number finite and in range, or are refused with one short line (ScenarioError); nothing
else escapes resolution, so a bad scenario never gets as far as starting a peer.

A seeded mutator (deterministic, so CI sees the same mutants every time) changes one key
of a shipped scenario, in the raw table or as a ``--set`` override, the way the launcher
resolves them (``p2pgame.launch.run``: ``load_raw``, ``apply_overrides``, ``resolve``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import tomllib
from pathlib import Path
from typing import Any

import pytest

from p2pgame.config import C_INT, INT64, ScenarioError
from p2pgame.exchange import exchange_class
from p2pgame.learners import config_class, learner_class
from p2pgame.scenario import (
    COMM_KEYS,
    RUNTIME_KEYS,
    TOP_KEYS,
    TOPOLOGY_KEYS,
    apply_overrides,
    expand_preset,
    load_raw,
    resolve,
)

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
SCENARIOS = [p for p in sorted(TOPOLOGIES.glob("*.toml"))
             if "grid" not in tomllib.loads(p.read_text())]  # sweep files: test_config
VALUES_PER_KEY = 2  # about 300 mutants of keys, 100 overrides, 30 unknown keys
OVERRIDES_PER_FILE = 4
MAX_CHARS = 300  # a refusal's length, besides its list of allowed keys


def _deep(depth: int) -> dict:
    table: dict = {"leaf": 1}
    for _ in range(depth):
        table = {"a": table}
    return table


# Bad (or odd) values: wrong types, huge numbers, non-finite floats, negatives, unicode,
# long strings, deep nesting, lists where scalars are expected.
VALUES: list[Any] = [
    "text", "", True, False, 0, -1, -0.5, -2**31 - 1, 2**31, 2**63, 2**64, -2**63 - 1,
    10**5000, 1e308 * 10, -(1e308 * 10), float("nan"), 1e-320, 1e300,
    "ünï\u202ec\u00f6de \U0001f4a5", "new\nline", "x" * 100_000, "\x00",
    [1, 2], [], [[[[1]]]], ["a"] * 1000, [float("nan")], {}, {"k": float("inf")},
    _deep(60), [_deep(30)],
]
# The same as --set literals (what parse_override reads), and some it cannot read.
LITERALS = [
    "nan", "inf", "-inf", "+inf", "1e309", "-1e309", "9" * 5000, "9223372036854775808",
    "18446744073709551616", "-1", "0", "-0.0", "true", '"ünï\u202ec\u00f6de"',
    '"' + "x" * 100_000 + '"', "[1, 2]", "[[[]]]", "[" * 600 + "]" * 600,
    "{a = {a = {a = 1}}}", "{" * 200, "bare word", "", "0x7fffffffffffffff", "[nan]",
    '"cuda:7"', '"../../etc"',
]


# The keys of an old-form [algorithm] (a preset) that are not its learner's own: the
# model's name, and what the preset turns into the exchange.
PRESET_KEYS = {"game": ("model",), "expfam": ("family",),
               "diffgan": ("model", "combine", "wire_dtype", "snapshots", "peer_models")}


def _known_keys(raw: dict) -> list[tuple[str, ...]]:
    """Paths of keys a scenario may set, present or not (its exchange's and learner's
    included, under [algorithm] as an old-form file writes them)."""
    paths = [(k,) for k in TOP_KEYS if k not in ("topology", "comm", "runtime", "algorithm",
                                                   "exchange", "learner", "data", "peers")]
    paths += [("topology", k) for k in TOPOLOGY_KEYS]
    paths += [("comm", k) for k in COMM_KEYS]
    paths += [("runtime", k) for k in RUNTIME_KEYS]
    if "algorithm" in raw:
        new, preset = expand_preset(raw)
        own = [f.name for f in dataclasses.fields(config_class(new["learner"]["kind"]))
               if f.name != "kind"]
        paths += [("algorithm", k) for k in sorted({*own, *PRESET_KEYS[preset]})]
    else:
        new = raw
        paths += [("exchange", f.name)
                  for f in dataclasses.fields(exchange_class(new["exchange"]["kind"]).Config)]
        paths += [("learner", f.name)
                  for f in dataclasses.fields(config_class(new["learner"]["kind"]))]
    data = learner_class(new["learner"]["kind"]).data
    if data is not None:
        paths += [("data", f.name) for f in dataclasses.fields(data)]
    return paths


def _present(node: Any, path: tuple = ()) -> list[tuple]:
    """Paths of everything in the raw table (tables, array items and leaves)."""
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _present(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _present(v, (*path, i))
    return out


def _set(raw: dict, path: tuple, value: Any) -> None:
    node: Any = raw
    for k, part in enumerate(path):
        if not isinstance(node, (dict, list)) or isinstance(node, list) != isinstance(part, int):
            return  # (a scalar, or another shape, on the way: nothing to set)
        if isinstance(node, list) and part >= len(node):
            return
        if k == len(path) - 1:
            node[part] = copy.deepcopy(value)  # (never the pool's own object)
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            node = node[part]


def mutants(rng: random.Random, raws: dict[Path, dict]):
    """(scenario file, raw table, --set overrides, what was changed), for every key path
    of the shipped scenarios (each with values drawn from VALUES), every known key as a
    --set override (a literal from LITERALS) and some unknown keys."""
    targets: dict[tuple, list[tuple[Path, tuple]]] = {}
    for path, raw in raws.items():
        for where in _present(raw) + _known_keys(raw):
            general = tuple("[]" if isinstance(x, int) else x for x in where)
            targets.setdefault(general, []).append((path, where))
    for general in sorted(targets, key=repr):
        for value in rng.sample(VALUES, VALUES_PER_KEY):
            path, where = rng.choice(targets[general])
            mutated = tomllib.loads(path.read_text())  # a fresh copy
            _set(mutated, where, value)
            yield path, mutated, [], f"{'.'.join(map(str, where))} = {_short(value)}"
    for path, raw in raws.items():
        for key in rng.sample(_known_keys(raw), OVERRIDES_PER_FILE):
            text = f"{'.'.join(key)}={rng.choice(LITERALS)}"
            yield path, raw, [text], f"--set {text[:80]}"
        tables = [()] + [p for p in _present(raw) if isinstance(_get(raw, p), dict)]
        where = (*rng.choice(tables), rng.choice(["bogus", "ünknown", "x" * 5000]))
        mutated = tomllib.loads(path.read_text())
        _set(mutated, where, rng.choice(VALUES))
        yield path, mutated, [], f"unknown key {'.'.join(map(str, where))[:80]}"


def _get(raw: Any, path: tuple) -> Any:
    for part in path:
        raw = raw[part]
    return raw


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:
        text = "<huge int>"
    return text[:80]


def _check_numbers(obj: Any, where: str, meta: Any = None) -> None:
    """Every float in a resolved scenario is finite, every int fits its C type."""
    meta = meta or {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _check_numbers(getattr(obj, f.name), f"{where}.{f.name}", f.metadata)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_numbers(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_numbers(v, f"{where}[{i}]", meta)
    elif isinstance(obj, float):
        assert math.isfinite(obj), f"{where} = {obj}"
    elif isinstance(obj, int) and not isinstance(obj, bool):
        low, high = meta.get("int_range", C_INT)
        assert low <= obj <= high and INT64[0] <= obj <= INT64[1], f"{where} = {obj}"


def _check_refusal(msg: str) -> None:
    assert "\n" not in msg and "\r" not in msg, "more than one line"
    core = msg.split("; allowed: ")[0]
    assert len(core) <= MAX_CHARS, f"{len(msg)} characters"
    assert len(msg) <= 2 * MAX_CHARS, f"{len(msg)} characters"


def test_scenario_mutants_resolve_or_are_refused_in_one_short_line():
    raws = {p: load_raw(p) for p in SCENARIOS}
    assert len(raws) >= 20  # the shipped scenarios really are here
    outcomes = {"accepted": 0, "refused": 0}
    bad = []
    for k, (path, raw, overrides, what) in enumerate(mutants(random.Random(22), raws)):
        try:
            scenario = resolve(apply_overrides(raw, overrides), str(path))
        except ScenarioError as e:
            outcomes["refused"] += 1
            try:
                _check_refusal(str(e))
            except AssertionError as why:
                bad.append(f"#{k} {path.name}: {what}: {why}: {str(e)[:200]!r}")
            continue
        except Exception as e:  # noqa: BLE001 - what the fuzzer is for
            bad.append(f"#{k} {path.name}: {what}: {type(e).__name__}: {str(e)[:200]}")
            continue
        outcomes["accepted"] += 1
        try:
            _check_numbers(scenario, "scenario")
        except AssertionError as why:
            bad.append(f"#{k} {path.name}: {what}: accepted with {why}")
    total = sum(outcomes.values())
    assert total >= 300
    assert not bad, f"{len(bad)} of {total} mutants:\n" + "\n".join(bad[:20])
    # The mutants exercise both outcomes (a fuzzer that only ever refuses tests little):
    # a few dozen accepted (25 of 521 with runtime.compute among the keys; each key with
    # a closed set of values adds mutants that are refused), most refused.
    assert outcomes["accepted"] >= 20 and outcomes["refused"] >= total // 2, outcomes


@pytest.mark.parametrize("literal", LITERALS)
def test_every_set_literal_on_a_number_key_is_handled(literal):
    """Each odd --set literal, on a float and on an int key: accepted in range, or one line."""
    path = TOPOLOGIES / "expfam-ring8.toml"
    for key in ("comm.jitter_ms", "comm.send_hwm", "seed"):
        try:
            scenario = resolve(apply_overrides(load_raw(path), [f"{key}={literal}"]), str(path))
        except ScenarioError as e:
            _check_refusal(str(e))
            assert str(e).startswith("--set ") and key in str(e)[:40], str(e)[:200]
        else:
            _check_numbers(scenario, "scenario")


def test_partition_classes_that_are_not_a_list_are_refused():
    path = TOPOLOGIES / "mnist-demo.toml"
    with pytest.raises(ScenarioError, match="classes"):
        resolve(apply_overrides(load_raw(path), ['data.partition={kind="classes", classes=5}']),
                str(path))
