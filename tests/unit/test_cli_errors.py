"""Bad input to the command line: one line ``error: ...`` naming what and where, exit
status 2, no traceback, nothing prepared and nothing already written lost (issue 22).
A genuine bug: one line ``internal error: ...`` naming the traceback file, exit 1.

Everything here stops before any peer starts: no process, no data, no network."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from p2pgame import cli
from p2pgame.config import ScenarioError
from p2pgame.launch import backends, check_writable
from p2pgame.learners.expfam import ExpFamHooks
from p2pgame.scenario import load_raw

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "expfam-ring4.toml"
# Folders a mkdir fails in even for root, though os.access says yes to root there.
UNWRITABLE = ["/proc/nope", "/sys/nope"]


def _one_line_error(code: int, capsys, *needles: str) -> str:
    """Exit 2, exactly one line on stderr, starting ``error:``, naming ``needles``."""
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a peer process was about to start")

    monkeypatch.setattr(backends.LocalSpawnBackend, "start", refuse)


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A finished run's folder as far as eval and report read it (expfam-ring4)."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "resolved.json").write_text(json.dumps(
        {"source": str(SCENARIO), "overrides": [], "raw": load_raw(SCENARIO)}))
    (d / "summary.json").write_text(json.dumps(
        {"scenario": "expfam-ring4", "mode": "sync", "n_peers": 1, "steps": 2,
         "peers": {"0": {"steps": 2, "ne_max_abs": 0.5}}}))
    (d / "metrics").mkdir()
    (d / "metrics" / "peer-0.jsonl").write_text(
        '{"step": 1, "ne_max_abs": 1.0}\n{"step": 2, "ne_max_abs": 0.5}\n')
    return d


# --------------------------------------------------------------------------- 1. --out


@pytest.mark.parametrize("where", UNWRITABLE)
def test_check_writable_really_tries(where) -> None:
    with pytest.raises(ScenarioError, match=f"{where}: cannot create a folder in "):
        check_writable(Path(where), "--out")


def test_check_writable_leaves_nothing_behind(tmp_path) -> None:
    check_writable(tmp_path / "a" / "b", "--out")
    check_writable(tmp_path, "--out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(ScenarioError, match="is a file, not a folder"):
        check_writable(tmp_path / "f" / "sub", "--out")


def test_check_writable_names_a_read_only_file_system(tmp_path, monkeypatch) -> None:
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(ScenarioError, match=r"--out .*: cannot create a folder in .*: "
                                            "read-only file system"):
        check_writable(tmp_path / "runs", "--out")


@pytest.mark.parametrize("where", UNWRITABLE)
def test_run_out_unwritable(where, tmp_path, capsys) -> None:
    code = cli.main(["run", str(SCENARIO), "--out", where, "--quiet"])
    _one_line_error(code, capsys, f"--out {where}", "cannot create a folder")


def test_run_dir_unwritable(capsys) -> None:
    code = cli.main(["run", str(SCENARIO), "--run-dir", "/proc/nope/run", "--quiet"])
    _one_line_error(code, capsys, "--run-dir /proc/nope/run")


@pytest.mark.parametrize("where", UNWRITABLE)
def test_sweep_out_unwritable(where, tmp_path, capsys) -> None:
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'scenario = "{SCENARIO}"\n[grid]\n"steps" = [2, 3]\n')
    code = cli.main(["sweep", str(spec), "--out", where, "--quiet"])
    _one_line_error(code, capsys, f"--out {where}", "cannot create a folder")


@pytest.mark.parametrize("where", UNWRITABLE)
def test_report_out_unwritable(where, run_folder, capsys) -> None:
    code = cli.main(["report", str(run_folder), "--out", where])
    _one_line_error(code, capsys, f"--out {where}")
    assert sorted(p.name for p in run_folder.iterdir()) == ["metrics", "resolved.json",
                                                            "summary.json"]


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "p2pgame"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "p2pgame.cli"]


def test_the_real_exit_path_is_one_line_and_2(tmp_path) -> None:
    for argv in (["run", str(SCENARIO), "--out", "/proc/nope", "--quiet"],
                 ["eval", str(tmp_path), "--samples", "-5"]):
        proc = subprocess.run([*_cli(), *argv], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert len(proc.stderr.splitlines()) == 1, proc.stderr


# --------------------------------------------------------------------------- 2. options


@pytest.fixture
def evaluations(monkeypatch) -> list:
    """ExpFam gets an evaluation that records its calls (expfam has none of its own)."""
    calls: list = []

    def evaluate_run(self, run_dir, data_root, options, log):
        calls.append(options)
        return {"0": {"ne_max_abs": 0.25}}

    monkeypatch.setattr(ExpFamHooks, "evaluate_run", evaluate_run)
    return calls


@pytest.mark.parametrize("samples", ["-5", "0", "1", "100000000", "abc", "2.5"])
def test_eval_samples_checked_before_any_work(samples, run_folder, tmp_path, evaluations,
                                              capsys) -> None:
    code = cli.main(["eval", str(run_folder), "--data", str(tmp_path), "--samples", samples])
    _one_line_error(code, capsys, "--samples", samples)
    assert evaluations == []
    assert not (run_folder / "evaluation.json").exists()


def test_eval_missing_inception_and_data_before_any_work(run_folder, tmp_path, evaluations,
                                                         capsys) -> None:
    code = cli.main(["eval", str(run_folder), "--data", str(tmp_path),
                     "--inception", str(tmp_path / "nope.pth")])
    _one_line_error(code, capsys, "--inception", "nope.pth")
    code = cli.main(["eval", str(run_folder), "--data", str(tmp_path / "nodata")])
    _one_line_error(code, capsys, "--data", "nodata")
    assert evaluations == []


def test_eval_of_a_folder_that_is_not_a_run(run_folder, tmp_path, evaluations, capsys) -> None:
    (run_folder / "resolved.json").write_text("{ truncated")
    code = cli.main(["eval", str(run_folder), "--data", str(tmp_path)])
    _one_line_error(code, capsys, str(run_folder / "resolved.json"), "not a run")
    (run_folder / "resolved.json").write_text("{}")
    code = cli.main(["eval", str(run_folder), "--data", str(tmp_path)])
    _one_line_error(code, capsys, "resolved.json")
    assert evaluations == []


def test_eval_never_overwrites_an_earlier_evaluation(run_folder, tmp_path, evaluations,
                                                     capsys) -> None:
    (run_folder / "evaluation.json").write_text('"end of run"')
    for _ in range(2):
        assert cli.main(["eval", str(run_folder), "--data", str(tmp_path),
                         "--samples", "50"]) == 0
    assert [c["samples"] for c in evaluations] == [50, 50]
    assert (run_folder / "evaluation.json").read_text() == '"end of run"'
    assert (run_folder / "evaluation-rerun.json").is_file()
    assert (run_folder / "evaluation-rerun-2.json").is_file()
    assert "evaluation-rerun-2.json" in capsys.readouterr().out


def test_report_of_a_corrupt_run_folder(run_folder, capsys) -> None:
    metrics = run_folder / "metrics" / "peer-0.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
    code = cli.main(["report", str(run_folder)])
    _one_line_error(code, capsys, str(metrics), "line 2")
    metrics.write_text('{"step": 1}\n{"step": 2, "ne_m')  # a run killed mid-line: kept
    assert cli.main(["report", str(run_folder)]) == 0
    capsys.readouterr()
    (run_folder / "summary.json").write_text('{"peers": ')
    code = cli.main(["report", str(run_folder)])
    _one_line_error(code, capsys, str(run_folder / "summary.json"), "not valid JSON")
    (run_folder / "summary.json").write_text("[]")
    code = cli.main(["report", str(run_folder)])
    _one_line_error(code, capsys, "summary.json", "not a finished run folder")


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_toml_file_that_is_not_text(command, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe\x00name = 1\n")
    code = cli.main([command, str(bad), "--out", str(tmp_path / "out"), "--quiet"])
    _one_line_error(code, capsys, str(bad), "UTF-8")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, needle", [
    (["eval"], "run_dir"),
    (["bogus"], "bogus"),
    (["data"], "fetch,verify,build"),
    (["run", str(SCENARIO), "--nope"], "--nope"),
])
def test_usage_errors_are_one_line(argv, needle, capsys) -> None:
    _one_line_error(cli.main(argv), capsys, needle, "--help")


def test_data_build_grid_and_root_checked_first(tmp_path, capsys) -> None:
    code = cli.main(["data", "build", "polymnist", "--root", str(tmp_path),
                     "--grid", str(tmp_path / "grid.txt")])
    _one_line_error(code, capsys, "--grid", "grid.txt")
    code = cli.main(["data", "build", "polymnist", "--root", "/proc/nope"])
    _one_line_error(code, capsys, "--root /proc/nope")


def test_os_error_on_a_named_path_is_one_line(run_folder, tmp_path, monkeypatch,
                                              capsys) -> None:
    out = tmp_path / "rep"

    def denied(run_dirs, out_dir):
        raise PermissionError(errno.EACCES, "Permission denied", str(out_dir / "report.md"))

    monkeypatch.setattr("p2pgame.report.write_report", denied)
    code = cli.main(["report", str(run_folder), "--out", str(out)])
    _one_line_error(code, capsys, f"--out {out}", "Permission denied", "report.md")


@pytest.mark.parametrize("error", [KeyError("peers"),
                                   FileNotFoundError(errno.ENOENT, "No such file",
                                                     "/nowhere/internal.json")])
def test_a_bug_is_one_line_naming_the_traceback_file(error, run_folder, tmp_path, monkeypatch,
                                                     capsys) -> None:
    def bug(run_dirs, out_dir):
        raise error

    monkeypatch.setattr("p2pgame.report.write_report", bug)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("P2PGAME_TRACEBACK", raising=False)
    assert cli.main(["report", str(run_folder)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and len(err.splitlines()) == 1, err
    assert err.startswith("internal error") and type(error).__name__ in err
    assert "test_cli_errors.py:" in err  # where it was raised
    saved = Path(err.rsplit("full traceback: ", 1)[1].strip())
    assert saved.parent == tmp_path and "Traceback" in saved.read_text()
    monkeypatch.setenv("P2PGAME_TRACEBACK", "1")  # the traceback itself, for debugging
    with pytest.raises(type(error)):
        cli.main(["report", str(run_folder)])


# --------------------------------------------------------------------------- 3. --version


def test_version(capsys) -> None:
    from importlib.metadata import version

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"p2pgame {version('p2pgame')}"


def test_sweep_folders_never_collide(tmp_path, monkeypatch) -> None:
    """Two sweeps started in the same second get two folders (the second is not refused
    with a traceback, nor mixed into the first)."""
    import p2pgame.launch
    from p2pgame import sweep

    spec = sweep.load_sweep(_spec(tmp_path))
    monkeypatch.setattr(p2pgame.launch, "run", _no_run)

    class Frozen:
        @staticmethod
        def now():
            import datetime

            return datetime.datetime(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(sweep, "datetime", Frozen)
    first = sweep.run_sweep(spec, tmp_path / "out", tmp_path, log=lambda m: None)
    second = sweep.run_sweep(spec, tmp_path / "out", tmp_path, log=lambda m: None)
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == f"{first.name}-2"


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(f'name = "s"\nscenario = "{SCENARIO}"\nmetrics = ["steps"]\n'
                    '[grid]\n"steps" = [2]\n')
    return path


def _no_run(*a, **k):
    raise RuntimeError("no run in a unit test")

