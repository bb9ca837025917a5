"""The Python API (README, "Python API"): ``p2pgame.run`` with a scenario file, TOML text
or a dict and ``set`` overrides as a list or a dict; its :class:`RunResult` against the
run folder; ``p2pgame.load`` of that folder; scenario errors naming ``<dict>`` /
``<string>`` and the key; and runs from a script without a main guard, ``python -c``,
standard input and a running event loop (as in a Jupyter cell), as subprocesses.

Every run is a 2-peer exp-family game of a few dozen steps (no data set, no torch).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import p2pgame
from p2pgame.api import RunResult, overrides_list, toml_document, toml_literal
from p2pgame.config import ScenarioError
from p2pgame.scenario import parse_override

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RING4 = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"

SCENARIO = {
    "name": "api-expfam",
    "seed": 3,
    "steps": 40,
    "topology": {"n": 2, "graph": "complete", "weights": "self_weight", "self_weight": 0.5},
    "comm": {"mode": "sync", "samples_per_message": 32},
    "exchange": {"kind": "samples", "missing": "renormalise"},
    "learner": {"kind": "expfam-bernoulli", "dim": 4, "n_data": 100, "batch": 32, "lr": 0.2},
    "runtime": {"threads_per_peer": 1, "metrics_every": 10, "stop_timeout_s": 5.0,
                "tensorboard": False},
}

# The same scenario as TOML text, without a name (the run is then named "scenario").
TEXT = """\
seed = 3
steps = 40

[topology]
n = 2
graph = "complete"
self_weight = 0.5

[comm]
samples_per_message = 32

[exchange]
kind = "samples"
missing = "renormalise"

[learner]
kind = "expfam-bernoulli"
dim = 4
n_data = 100
batch = 32
lr = 0.2

[runtime]
threads_per_peer = 1
metrics_every = 10
stop_timeout_s = 5.0
tensorboard = false
"""


def _folders(tmp_path: Path) -> dict:
    return {"out": tmp_path / "runs", "data": tmp_path / "data"}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _same(a: RunResult, b: RunResult) -> None:
    """Equal results, NaN included (compared as JSON)."""
    def plain(r: RunResult) -> str:
        return json.dumps(vars(r), default=str, sort_keys=True)

    assert plain(a) == plain(b)


def _check_against_folder(result: RunResult, out: Path, n: int, steps: int) -> None:
    """Every field of the result is what the run folder holds."""
    root = result.run_dir
    assert root.parent == out and root.is_dir()
    assert result.exit_code == 0 and result.ok and result.failures == {}
    summary = json.loads((root / "summary.json").read_text())
    assert result.summary == summary
    assert summary["n_peers"] == n and summary["steps"] == steps
    assert result.peers == {int(k): v for k, v in summary["peers"].items()}
    assert sorted(result.peers) == list(range(n))
    assert all(p["steps"] == steps for p in result.peers.values())
    assert sorted(result.metrics) == list(range(n))
    for i in range(n):
        lines = _jsonl(root / "metrics" / f"peer-{i}.jsonl")
        assert lines and result.metrics[i] == lines
        assert lines[-1]["step"] == steps - 1
    assert result.edges == summary["links"]
    with (root / "links.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["src"]), int(r["dst"]), int(r["sent"])) for r in rows] == \
        [(e["src"], e["dst"], e["sent"]) for e in result.edges]
    assert len(result.edges) == n * (n - 1)  # complete graph (or a ring of n <= 3)
    assert all(e["sent"] == e["delivered"] > 0 for e in result.edges)
    # nothing else in out: no staging file left beside the run folder
    assert [p.name for p in out.iterdir()] == [root.name]
    # load of the folder: the same result
    _same(p2pgame.load(root), result)
    _same(p2pgame.load(str(root)), result)


# --------------------------------------------------------------------------- runs

def test_run_a_dict_with_set_as_a_list(tmp_path):
    folders = _folders(tmp_path)
    result = p2pgame.run(SCENARIO, ["steps=30", "comm.drop=0.0"], **folders)
    _check_against_folder(result, folders["out"], n=2, steps=30)
    root = result.run_dir
    assert root.name.startswith("api-expfam-")
    assert result.summary["overrides"] == ["steps=30", "comm.drop=0.0"]
    # the dict as the run folder's scenario.toml: it parses back to the dict
    assert tomllib.loads((root / "scenario.toml").read_text()) == SCENARIO
    resolved = json.loads((root / "resolved.json").read_text())
    assert resolved["source"] == "<dict>" and resolved["overrides"] == ["steps=30",
                                                                         "comm.drop=0.0"]
    assert resolved["raw"]["steps"] == 30
    assert json.loads((root / "scenario.json").read_text())["source"] == "<dict>"


def test_run_toml_text_with_set_as_a_dict(tmp_path):
    folders = _folders(tmp_path)
    result = p2pgame.run(TEXT, {"steps": 25, "topology.graph": "ring", "comm.pack_bool": True,
                                "topology.self_weight": [0.5, 0.5]}, **folders)
    _check_against_folder(result, folders["out"], n=2, steps=25)
    root = result.run_dir
    assert root.name.startswith("scenario-")  # no name: the run is "scenario"
    assert result.summary["overrides"] == ['steps=25', 'topology.graph="ring"',
                                           "comm.pack_bool=true",
                                           "topology.self_weight=[0.5, 0.5]"]
    assert (root / "scenario.toml").read_text() == TEXT  # the text exactly as given
    resolved = json.loads((root / "resolved.json").read_text())
    assert resolved["source"] == "<string>"
    assert resolved["raw"]["topology"]["graph"] == "ring"


@pytest.mark.parametrize("as_path", [str, Path])
def test_run_a_file(tmp_path, as_path):
    folders = _folders(tmp_path)
    result = p2pgame.run(as_path(RING4), ["steps=20", "topology.n=3"], **folders)
    _check_against_folder(result, folders["out"], n=3, steps=20)
    root = result.run_dir
    assert root.name.startswith("expfam-ring4-")
    assert (root / "scenario.toml").read_bytes() == RING4.read_bytes()
    assert json.loads((root / "resolved.json").read_text())["source"] == str(RING4)


def test_metrics_and_edges_frames(tmp_path):
    pd = pytest.importorskip("pandas")
    result = p2pgame.run(SCENARIO, {"steps": 20}, **_folders(tmp_path))
    frame = result.metrics_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns[:3]) == ["peer", "step", "t"]
    assert len(frame) == sum(len(v) for v in result.metrics.values())
    assert sorted(frame["peer"].unique()) == [0, 1]
    edges = result.edges_frame()
    assert len(edges) == 2 and list(edges["sent"]) == [e["sent"] for e in result.edges]


def test_frames_without_pandas_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas: ImportError
    result = RunResult(Path("x"), 0, {}, {}, {0: [{"step": 0}]}, [])
    with pytest.raises(ImportError, match="pip install pandas"):
        result.metrics_frame()
    with pytest.raises(ImportError, match="pip install pandas"):
        result.edges_frame()


# --------------------------------------------------------------------------- errors

def test_a_bad_key_in_a_dict_is_named(tmp_path):
    folders = _folders(tmp_path)
    bad = {**SCENARIO, "comm": {**SCENARIO["comm"], "dropp": 0.1}}
    with pytest.raises(ScenarioError, match=r"^<dict>: comm: unknown key 'dropp'; allowed: "):
        p2pgame.run(bad, **folders)
    bad = {**SCENARIO, "learner": {**SCENARIO["learner"], "lr": None}}
    with pytest.raises(ScenarioError, match=r"^<dict>: learner\.lr: None is not a TOML value"):
        p2pgame.run(bad, **folders)
    assert not folders["out"].exists()  # refused before anything was written


def test_a_bad_value_in_text_or_set_is_named(tmp_path):
    folders = _folders(tmp_path)
    with pytest.raises(ScenarioError, match=r"^<string>: steps: expected an integer"):
        p2pgame.run(TEXT.replace("steps = 40", 'steps = "forty"'), **folders)
    with pytest.raises(ScenarioError, match=r"^<string>: not valid TOML: "):
        p2pgame.run("steps = = 1\n", **folders)
    with pytest.raises(ScenarioError, match=r"^<string>: not valid TOML \(nor the path of an "
                                            r"existing file\)"):
        p2pgame.run(str(tmp_path / "no=such.toml"), **folders)
    with pytest.raises(ScenarioError, match=r"^--set comm\.drop=2\.0: comm: drop = 2\.0"):
        p2pgame.run(SCENARIO, {"comm.drop": 2.0}, **folders)
    with pytest.raises(ScenarioError, match="scenario file not found"):
        p2pgame.run(tmp_path / "missing.toml", **folders)
    assert not folders["out"].exists()


def test_load_refuses_what_is_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        p2pgame.load(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        p2pgame.load(tmp_path)
    (tmp_path / "resolved.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has not finished"):
        p2pgame.load(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable summary"):
        p2pgame.load(tmp_path)


# --------------------------------------------------------------------------- TOML out

def test_set_values_become_toml_literals():
    overrides = overrides_list({"a.b": "x y", "c": True, "d": [1, 2.5, "z"], "e": {"f": 1},
                                "g": 'q"uote\\', "peers[1].learner.lr": 1e-4, "h": -3})
    assert overrides == ['a.b="x y"', "c=true", 'd=[1, 2.5, "z"]', "e={ f = 1 }",
                         'g="q\\"uote\\\\"', "peers[1].learner.lr=0.0001", "h=-3"]
    values = [parse_override(o)[1] for o in overrides]
    assert values == ["x y", True, [1, 2.5, "z"], {"f": 1}, 'q"uote\\', 1e-4, -3]
    assert overrides_list(["steps=3"]) == ["steps=3"] and overrides_list(None) == []
    assert toml_literal(float("inf")) == "inf" and toml_literal(float("-inf")) == "-inf"
    with pytest.raises(ScenarioError, match=r"set\['k'\]: None is not a TOML value"):
        overrides_list({"k": None})


def test_a_dict_is_written_as_toml_that_reads_back_the_same():
    raw = {"name": "x", "steps": 3, "odd key": "tab\tdel\x7fé😀",
           "topology": {"n": 3, "schedule": [{"at": 5, "graph": "star"}],
                        "matrix": [[0.5, 0.5], [1.0, 0.0]]},
           "comm": {"edges": [{"src": 0, "dst": 1, "drop": 0.5}], "nested": {"deep": {"a": 1}}},
           "peers": [{"ids": [0], "learner": {"lr": 0.1}}, {"ids": [1, 2], "runtime": {}}],
           "empty": {}}
    assert tomllib.loads(toml_document(raw)) == raw
    assert tomllib.loads(toml_document(SCENARIO)) == SCENARIO


# --------------------------------------------------------------------------- callers

SCRIPT = """\
import json, sys
import p2pgame

scenario = {scenario!r}
result = p2pgame.run(scenario, {{"steps": 20}}, out={out!r}, data={data!r})
print("SUMMARY " + json.dumps({{"exit_code": result.exit_code,
                               "steps": result.summary["steps"],
                               "peers": sorted(result.peers)}}))
sys.exit(result.exit_code)
"""

# As in a Jupyter cell: the call made while the kernel's event loop runs.
IN_A_LOOP = """\
import asyncio
real_run = p2pgame.run

async def cell():
    return real_run(scenario, {{"steps": 20}}, out={out!r}, data={data!r})

loop = asyncio.new_event_loop()
result = loop.run_until_complete(cell())
loop.close()
"""


def _script(tmp_path: Path, in_a_loop: bool = False) -> str:
    fields = {"scenario": SCENARIO, "out": str(tmp_path / "runs"),
              "data": str(tmp_path / "data")}
    text = SCRIPT.format(**fields)
    if in_a_loop:  # (the cell's run replaces the plain call)
        head, _, tail = text.partition("result = p2pgame.run(")
        tail = tail.split("\n", 1)[1]
        text = head + IN_A_LOOP.format(**fields) + tail
    return text


def _check_caller(proc: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert len(lines) == 1, proc.stdout  # the script ran once, not again in the peers
    assert json.loads(lines[0].removeprefix("SUMMARY ")) == {
        "exit_code": 0, "steps": 20, "peers": [0, 1]}
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file()


def _python(args: list[str], tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=110, **kw)


@pytest.mark.timeout(120)
def test_a_script_file_without_a_main_guard(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(_script(tmp_path))
    _check_caller(_python([str(script)], tmp_path), tmp_path)


@pytest.mark.timeout(120)
def test_python_dash_c(tmp_path):
    _check_caller(_python(["-c", _script(tmp_path)], tmp_path), tmp_path)


@pytest.mark.timeout(120)
def test_a_script_from_standard_input(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(_script(tmp_path))
    with script.open() as stdin:
        proc = _python(["-"], tmp_path, stdin=stdin)
    _check_caller(proc, tmp_path)


@pytest.mark.timeout(120)
def test_a_call_inside_a_running_event_loop_from_standard_input(tmp_path):
    """As a Jupyter cell: ``__main__`` is no file, and the kernel's loop is running."""
    text = _script(tmp_path, in_a_loop=True)
    assert "run_until_complete" in text
    proc = _python(["-"], tmp_path, input=text)
    _check_caller(proc, tmp_path)


# --------------------------------------------------------------------------- the README's

def _readme_example() -> str:
    """The first ``python`` block of the README's "Python API" section, as written."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["script", "stdin"])
def test_the_readmes_example_runs(tmp_path, how):
    example = tmp_path / "example.py"
    example.write_text(_readme_example())
    if how == "script":
        proc = _python([str(example)], tmp_path)
    else:
        with example.open() as stdin:
            proc = _python(["-"], tmp_path, stdin=stdin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("two-players-") and (run_dir / "summary.json").is_file()
    assert proc.stdout.startswith(f"0 runs/{run_dir.name}\n"), proc.stdout
