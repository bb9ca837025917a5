"""Named link and device profiles: what they set, what wins over them, and that the
README's tables give the figures the code uses."""

import re
from pathlib import Path

import pytest

from p2pgame.config import DEVICE_PROFILES, LINK_PROFILES, ScenarioError
from p2pgame.scenario import load_scenario, resolve_comm

ROOT = Path(__file__).resolve().parents[2]


def _readme_rows(first_header: str) -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"| {first_header} |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def _kbit(text: str) -> float:
    """'3 Mbit/s' -> bytes per second, with the presets' K = 1024 bits."""
    m = re.fullmatch(r"([\d.]+) (K|M)bit/s", text)
    assert m, text
    return float(m.group(1)) * (1024 if m.group(2) == "K" else 1024 * 1024) / 8


def test_the_readme_gives_every_link_profile_with_its_figures():
    rows = _readme_rows("link `profile`")
    assert set(rows) == set(LINK_PROFILES)
    for name, (bandwidth, latency, source) in rows.items():
        prof = LINK_PROFILES[name]
        assert prof.bandwidth == (0.0 if bandwidth == "(not set)" else _kbit(bandwidth)), name
        assert float(latency.removesuffix(" ms")) == pytest.approx(prof.latency_ms, abs=0.05)
        assert source


def test_the_readme_gives_every_device_profile_with_its_speed():
    rows = _readme_rows("`device_profile`")
    assert set(rows) == set(DEVICE_PROFILES)
    for name, (speed, source) in rows.items():
        num, _, den = speed.partition("/")
        assert DEVICE_PROFILES[name].speed == pytest.approx(float(num) / float(den or 1))
        assert source


def test_a_link_profile_sets_bandwidth_and_latency_and_the_tables_own_keys_win():
    lte = LINK_PROFILES["lte"]
    link = resolve_comm({"profile": "lte"}, 2).link
    assert (link.bandwidth, link.latency_ms) == (lte.bandwidth, lte.latency_ms)
    link = resolve_comm({"profile": "lte", "latency_ms": 5.0}, 2).link
    assert (link.bandwidth, link.latency_ms) == (lte.bandwidth, 5.0)
    # An edge's profile overrides the default link's figures, not the edge's own keys.
    comm = resolve_comm({"latency_ms": 1.0, "bandwidth": 1e9, "drop": 0.1,
                         "edges": [{"src": 0, "dst": 1, "profile": "3g", "drop": 0.2}]}, 2)
    edge = comm.link_of(0, 1)
    assert (edge.bandwidth, edge.latency_ms, edge.drop) == (
        LINK_PROFILES["3g"].bandwidth, LINK_PROFILES["3g"].latency_ms, 0.2)
    assert comm.link_of(1, 0).latency_ms == 1.0


def test_a_trace_gives_the_bandwidth_beside_a_profile(tmp_path):
    (tmp_path / "t.txt").write_text("1\n")
    (tmp_path / "s.toml").write_text("")
    source = str(tmp_path / "s.toml")
    link = resolve_comm({"profile": "wifi", "trace": "t.txt"}, 2, source).link
    assert (link.bandwidth, link.latency_ms, link.trace) == (0.0, 2.0, "t.txt")
    assert link.rate == 1500 * 1000


def test_unknown_profiles_and_two_speeds_are_refused_naming_the_key(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text((ROOT / "topologies/expfam-ring8-virtual.toml").read_text())
    (tmp_path / "traces").symlink_to(ROOT / "topologies/traces")
    with pytest.raises(ScenarioError, match=r"comm.profile = 'lan'.*known: gprs"):
        load_scenario(path, ['comm.profile="lan"'])
    with pytest.raises(ScenarioError, match=r"device_profile = 'phone'.*known: desktop"):
        load_scenario(path, ['runtime.device_profile="phone"'])
    with pytest.raises(ScenarioError, match=r"speed = 0.5 and device_profile = 'desktop'"):
        load_scenario(path, ['runtime.device_profile="desktop"', "runtime.speed=0.5"])


def test_the_shipped_virtual_scenario_uses_a_device_and_a_link_profile():
    s = load_scenario(ROOT / "topologies/expfam-ring8-virtual.toml")
    assert s.player(6).pace.speed == DEVICE_PROFILES["mid-tier-mobile"].speed
    assert s.player(5).pace.speed == 1.0
    edge = s.comm.link_of(6, 7)
    assert (edge.bandwidth, edge.trace) == (LINK_PROFILES["lte"].bandwidth, "")
    assert s.comm.link_of(5, 6).trace  # (the others keep the scenario's trace)


def test_an_availability_file_gives_the_offline_windows(tmp_path):
    (tmp_path / "away.txt").write_text("# peer 1 is away\n2.0 4.0\n\n10 12.5  # again\n")
    (tmp_path / "bad.txt").write_text("1 2\n3\n")
    (tmp_path / "back.txt").write_text("5 6\n1 2\n")
    path = tmp_path / "s.toml"
    path.write_text((ROOT / "topologies/expfam-ring8-virtual.toml").read_text()
                    + '\n[[peers]]\nids = [1]\nruntime = { availability = "away.txt" }\n')
    (tmp_path / "traces").symlink_to(ROOT / "topologies/traces")
    s = load_scenario(path)
    assert s.player(1).pace.offline == ((2.0, 4.0), (10.0, 12.5))
    assert s.player(0).pace.offline == ()
    for name, match in (("bad.txt", r"bad.txt'?: line 2: '3' is not a window FROM TO"),
                        ("back.txt", r"line 2: \[1, 2\) must have 0 <= FROM < TO.*ends at 6"),
                        ("none.txt", r"availability = 'none.txt': no such file")):
        with pytest.raises(ScenarioError, match=match):
            load_scenario(path, [f'peers[2].runtime.availability="{name}"'])
    with pytest.raises(ScenarioError, match="both give the peer's offline windows"):
        load_scenario(path, ["peers[2].runtime.offline=[[1.0, 2.0]]"])
    # A group's own file replaces windows the [runtime] default gave.
    s = load_scenario(path, ["runtime.offline=[[0.5, 1.0]]"])
    assert s.player(1).pace.offline == ((2.0, 4.0), (10.0, 12.5))
    assert s.player(0).pace.offline == ((0.5, 1.0),)
