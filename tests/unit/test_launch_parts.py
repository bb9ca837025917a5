"""The launcher's four stages apart (prepare, start, supervise, summarise), the run folder's
layout, the backends' capabilities and the log lines: no peer process is started."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import p2pgame.launch as launch
from p2pgame.config import RuntimeSpec, ScenarioError
from p2pgame.launch.backends import BackendError, LocalBackend, RayBackend, backend_class
from p2pgame.launch.hold import SignalHold
from p2pgame.launch.launcher import Launcher
from p2pgame.launch.logs import PlainFormatter, StderrHandler, setup_logging
from p2pgame.launch.rundir import RunFolder, RunLayout
from p2pgame.launch.summary import exit_code

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"
LAUNCH = ROOT / "p2pgame" / "launch"


@pytest.fixture(autouse=True)
def _no_backend(monkeypatch):
    """Nothing here may make a backend (which could start processes)."""

    def refuse(*a, **k):
        raise AssertionError("a backend was about to be made")

    monkeypatch.setattr(launch, "make_backend", refuse)


@pytest.fixture
def prepared_calls(monkeypatch) -> list[Path]:
    """The data roots the method's ``hooks.prepare`` was called with (spied on through
    :func:`p2pgame.launch.method_of`, the launcher's one way to the method)."""
    calls: list[Path] = []
    real = launch.method_of

    class Method:
        def __init__(self, info):
            self._info = info

        def __getattr__(self, name):
            return getattr(self._info, name)

        def hooks(self):
            base = self._info.hooks()

            class Spied(base):
                def prepare(self, data_root, log):
                    calls.append(data_root)
                    return super().prepare(data_root, log)

            return Spied

    monkeypatch.setattr(launch, "method_of", lambda scenario: Method(real(scenario)))
    return calls


# --------------------------------------------------------------------------- prepare


@pytest.mark.parametrize("where", ["/proc/nope", "/sys/nope/runs"])
def test_prepare_refuses_an_unwritable_out_before_anything(where, prepared_calls) -> None:
    with pytest.raises(ScenarioError, match=f"--out {where}: cannot create a folder"):
        launch.prepare(SCENARIO, out=where)
    assert prepared_calls == []  # the method prepared nothing (no data, no evaluator)


def test_prepare_refuses_a_used_run_dir_and_leaves_it_alone(tmp_path, prepared_calls) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "summary.json").write_text("{}")
    with pytest.raises(ScenarioError, match="already exists and is not an empty folder"):
        launch.prepare(SCENARIO, run_dir=used)
    assert [p.name for p in used.iterdir()] == ["summary.json"]
    assert prepared_calls == []


def test_prepare_writes_the_run_folder_and_settles_the_run(tmp_path, prepared_calls) -> None:
    p = launch.prepare(SCENARIO, ["steps=20"], out=tmp_path / "runs", data_root=tmp_path)
    assert prepared_calls == [tmp_path]
    layout = p.layout
    assert layout.root.parent == tmp_path / "runs"
    assert layout.root.name.startswith("expfam-ring4-")
    for path in (layout.scenario_toml, layout.resolved, layout.scenario_json, layout.topology,
                 layout.edges, layout.weights):
        assert path.is_file(), path
    assert not layout.summary.exists() and not layout.metrics_dir.exists()
    assert p.scenario.steps == 20 and p.overrides == ["steps=20"]
    assert not p.resuming and p.resumed is None
    assert p.placement == "process" and p.workers == 4 and p.threads == 1
    assert p.devices == ["cpu"] * 4 and p.backend_kind is LocalBackend


def test_resume_refuses_a_folder_without_resume_states(tmp_path) -> None:
    p = launch.prepare(SCENARIO, ['comm.mode="async"'], out=tmp_path)
    with pytest.raises(ScenarioError, match="no resume states"):
        launch.prepare(None, resume=p.layout.root)


# --------------------------------------------------------------------------- start


class _Refusing:
    """A backend that cannot start its peers."""

    remote = False

    def start(self, launches):
        raise BackendError("no room\nfor   the workers")

    def alive(self, peer):
        return False

    def exit_code(self, peer):
        return None


def _started(prepared, tmp_path, backend) -> SimpleNamespace:
    folder = RunFolder(prepared.layout)
    return SimpleNamespace(
        sock_dir=tmp_path, backend=backend, host="127.0.0.1", bind_node=False,
        tokens={i: b"t%d" % i for i in range(prepared.scenario.n)}, curve_launch={},
        server=SimpleNamespace(endpoint="ipc://x", junk=0), folder=folder,
        launcher=Launcher(prepared.scenario, prepared.schedule, folder, backend, False))


def test_a_failed_start_fails_every_peer_with_one_error_line(tmp_path, capsys) -> None:
    setup_logging()
    prepared = launch.prepare(SCENARIO, out=tmp_path / "runs")
    started = _started(prepared, tmp_path, _Refusing())
    error = launch.start_peers(prepared, started)
    assert error == "the peers could not be started: no room for the workers"
    assert capsys.readouterr().err == f"error: {error}\n"
    assert started.launcher.failures == {i: f"not started: {error}" for i in range(4)}
    launches = started.launcher.launches
    assert sorted(launches) == [0, 1, 2, 3]
    assert launches[0]["artifact_dir"] == str(prepared.layout.root.resolve())
    assert launches[0]["launcher_pid"] > 0 and launches[0]["incarnation"] == 0
    assert launches[0]["scenario"] is launches[3]["scenario"]  # one object for all


def test_a_remote_backend_shares_no_disk_and_no_pid(tmp_path) -> None:
    prepared = launch.prepare(SCENARIO, out=tmp_path / "runs")
    prepared = dataclasses.replace(prepared, backend_kind=RayBackend)  # (class only: no Ray)
    launches = launch.peer_launches(prepared, _started(prepared, tmp_path, _Refusing()))
    assert all(x["artifact_dir"] == "" and x["launcher_pid"] == 0 for x in launches.values())


# --------------------------------------------------------------------------- summarise


def test_the_exit_code_precedence_is_130_then_1_then_0() -> None:
    assert exit_code(False, False, None, None) == 0
    for failed, write_error, start_error in [(True, None, None), (False, "disk", None),
                                             (False, None, "no room"), (True, "d", "s")]:
        assert exit_code(False, failed, write_error, start_error) == 1
        assert exit_code(True, failed, write_error, start_error) == 130
    assert exit_code(True, False, None, None) == 130


class _Hooks:
    table_columns = ("ne_max_abs",)

    def __init__(self) -> None:
        self.after: list[Path] = []

    def after_run(self, run_dir, summary) -> None:
        self.after.append(run_dir)
        summary["evaluated"] = True


def _ended_run(tmp_path, *, interrupted=0, failures=None, write_error=None,
               start_error=None):
    """Prepared/Started/Ended of a run of 2 peers that reported nothing, made by hand."""
    scenario = SimpleNamespace(name="t", seed=1, n=2, steps=5,
                               comm=SimpleNamespace(mode="async"),
                               runtime=RuntimeSpec(backend="local"),
                               deterministic=False)  # (async on the real clock)
    layout = RunLayout(tmp_path)
    hooks = _Hooks()
    prepared = launch.Prepared(
        scenario=scenario, method=None, hooks=hooks, layout=layout, overrides=["steps=5"],
        schedule=None, data_root=tmp_path, backend_kind=LocalBackend, placement="process",
        workers=2, threads=1, devices=["cpu", "cpu"])
    folder = RunFolder(layout)
    folder.error = write_error
    launcher = SimpleNamespace(failures=dict(failures or {}), warnings={}, restarts={},
                               interrupted=interrupted, bad_control=0, summaries={}, files={})
    started = SimpleNamespace(launcher=launcher, folder=folder,
                              server=SimpleNamespace(junk=2), tensorboard=None, target=None)
    return prepared, started, launch.Ended(start_error, [], 1.5), hooks


@pytest.mark.parametrize("kw, code", [
    ({}, 0),
    ({"failures": {1: "process exited with code 1"}}, 1),
    ({"start_error": "the peers could not be started: no"}, 1),
    ({"interrupted": 1, "failures": {0: "x"}, "start_error": "s"}, 130),
])
def test_summarise_writes_the_summary_and_its_exit_code(tmp_path, kw, code) -> None:
    import json

    prepared, started, ended, hooks = _ended_run(tmp_path, **kw)
    result = launch.summarise(prepared, started, ended, SignalHold(lambda: None))
    assert result.exit_code == code and result.run_dir == tmp_path
    summary = json.loads(prepared.layout.summary.read_text())
    assert summary == result.summary
    assert list(summary)[:4] == ["scenario", "seed", "mode", "overrides"]
    assert summary["wall_s"] == 1.5 and summary["control_rejected"] == 2
    assert summary["interrupted"] is bool(kw.get("interrupted"))
    assert summary["start_error"] == kw.get("start_error")
    assert summary["table_columns"] == ["ne_max_abs"] and summary["write_error"] is None
    assert prepared.layout.links.is_file()
    # The method's after-run work only after a clean run.
    assert hooks.after == ([tmp_path] if code == 0 else [])
    assert summary.get("evaluated") is (True if code == 0 else None)


def test_summarise_names_a_write_error_on_stderr(tmp_path, capsys) -> None:
    setup_logging()
    prepared, started, ended, hooks = _ended_run(tmp_path, write_error="cannot write x: full")
    result = launch.summarise(prepared, started, ended, SignalHold(lambda: None))
    assert result.exit_code == 1 and hooks.after == []
    assert result.summary["write_error"] == "cannot write x: full"
    assert capsys.readouterr().err == ("error: cannot write x: full; every complete line "
                                       "already written is kept\n")


# --------------------------------------------------------------------------- the layout


def test_the_layout_names_every_file_of_the_readme_table() -> None:
    """Every file of README's "The run folder" table is a path the layout gives."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The run folder", 1)[1].split("The launcher alone", 1)[0]
    named = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            named |= {n.replace("<i>", "0") for n in
                      re.findall(r"`([^`]+)`", line.split("|")[1])}
    layout = RunLayout(Path("/r"))
    given = {layout.scenario_toml, layout.resolved, layout.scenario_json, layout.topology,
             layout.edges, layout.weights, layout.endpoints, layout.links, layout.summary,
             layout.evaluation, layout.metrics(0), layout.samples(0), layout.checkpoint(0),
             layout.log(0)}
    folders = {layout.tensorboard(0), layout.tensorboard(None)}  # named with a slash
    assert named and ({str(p.relative_to("/r")) for p in given}
                      | {f"{p.relative_to('/r')}/" for p in folders}) == named


def test_the_layout_of_per_peer_files_keys_and_resume() -> None:
    layout = RunLayout("/r")  # (a str becomes a Path)
    assert layout.root == Path("/r")
    assert layout.metrics(3) == Path("/r/metrics/peer-3.jsonl")
    assert layout.resume_state(2) == Path("/r/resume/peer-2.json")
    assert layout.public_key(1) == Path("/r/keys/peer-1.public")
    assert layout.public_key(None) == Path("/r/keys/launcher.public")
    assert layout.report_dir == Path("/r/report")
    assert [layout.before_resume(n).name for n in layout.REWRITTEN_ON_RESUME] == [
        "summary-before-resume.json", "links-before-resume.csv",
        "endpoints-before-resume.json"]


@pytest.mark.parametrize("name, where", [
    ("samples/peer-0.png", "samples/peer-0.png"), ("resume/peer-1.json", "resume/peer-1.json"),
    ("evaluation.json", "evaluation.json"), ("../x", None), ("/etc/passwd", None),
    ("a/../../x", None), ("", None), ("a//b", "a/b")])
def test_a_reported_name_stays_in_the_folder(name, where) -> None:
    got = RunLayout(Path("/r")).artifact(name)
    assert got == (None if where is None else Path("/r") / where)


def test_metrics_files_by_peer(tmp_path) -> None:
    layout = RunLayout(tmp_path)
    layout.metrics_dir.mkdir()
    for i in (1, 0, 10):
        layout.metrics(i).write_text("")
    (layout.metrics_dir / "other.txt").write_text("")
    assert layout.metrics_files() == {"0": layout.metrics(0), "1": layout.metrics(1),
                                      "10": layout.metrics(10)}


# --------------------------------------------------------------------------- backends


def test_the_backend_class_answers_before_a_backend_exists(tiny_raw) -> None:
    from p2pgame.scenario import resolve

    sc = resolve(tiny_raw, "s.toml")
    kind = backend_class(sc.runtime)
    assert kind is LocalBackend and kind.remote is False
    assert backend_class(SimpleNamespace(backend="ray")) is RayBackend and RayBackend.remote
    with pytest.raises(ValueError, match="not known"):
        backend_class(SimpleNamespace(backend="carrier-pigeon"))
    assert launch.placement_of(sc) == kind.auto_placement(sc) == "process"
    assert launch.n_workers(sc) == 4
    ray_rt = SimpleNamespace(placement="auto", device="auto", worker_gpus=1, worker_cpus=2.0,
                             threads_per_peer=0)
    ray_sc = SimpleNamespace(n=3, runtime=ray_rt)
    assert RayBackend.auto_placement(ray_sc) == "workers"
    assert RayBackend.threads_per_peer(ray_sc, "workers", None) == 2
    assert RayBackend.devices(ray_sc, "workers") == ["cuda:0"] * 3


def test_the_launcher_modules_know_no_backend_by_name() -> None:
    """Ray lives behind the backend: no module of the launcher but backends.py names it."""
    for path in sorted(LAUNCH.glob("*.py")):
        if path.name != "backends.py":
            assert not re.search(r"\bray\b", path.read_text(), re.IGNORECASE), path.name


# --------------------------------------------------------------------------- log lines


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("p2pgame.launch", level, __file__, 1, msg, None, None)


def test_log_lines_read_as_they_always_did() -> None:
    f = PlainFormatter()
    assert f.format(_record(logging.INFO, "stopping: asking peers")) == "stopping: asking peers"
    assert f.format(_record(logging.WARNING, "peer 3 late")) == "warning: peer 3 late"
    assert f.format(_record(logging.ERROR, "cannot write x")) == "error: cannot write x"
    assert f.format(_record(logging.INFO, "100 % done")) == "100 % done"  # (no %-formatting)


def test_logging_is_set_up_once_on_the_stderr_of_the_moment(capsys) -> None:
    logger = logging.getLogger("p2pgame")
    saved, saved_level = list(logger.handlers), logger.level
    for h in saved:
        logger.removeHandler(h)
    logger.setLevel(logging.NOTSET)
    try:
        setup_logging()
        setup_logging()
        assert [type(h) for h in logger.handlers] == [StderrHandler]
        assert logger.level == logging.INFO
        logging.getLogger("p2pgame.launch.launcher").info("one")
        logging.getLogger("p2pgame.sweep").warning("two")
        assert capsys.readouterr().err == "one\nwarning: two\n"
        own = logging.NullHandler()  # a caller's own configuration is kept
        logger.removeHandler(logger.handlers[0])
        logger.addHandler(own)
        setup_logging()
        assert logger.handlers == [own]
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in saved:
            logger.addHandler(h)
        logger.setLevel(saved_level)
