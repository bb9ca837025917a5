"""PolyMNIST built from tiny fake MNIST and tiny photographs (no scikit-image needed)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from p2pgame.data import DataError, polymnist
from p2pgame.rng import generator
from tests.helpers import write_tiny_mnist


def _photos():
    # Five flat colours: where the digit is, the colour is inverted.
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (120, 120, 0), (0, 0, 0)]
    return {f"p{k}": np.full((40 + k, 50, 3), c, np.uint8) for k, c in enumerate(colours)}


def _digest(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(polymnist.folder(root).iterdir())}


def test_build_is_deterministic_and_inverts_under_the_mask(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_tiny_mnist(root)
        polymnist.build(root, seed=3, photos=_photos(), log=lambda m: None)
    assert _digest(a) == _digest(b)  # byte-identical, manifest included
    arr = polymnist.load(a, "train")
    assert arr["x"].shape == (300, 28, 28, 3) and arr["x"].dtype == np.uint8
    assert arr["s"].dtype == bool and set(np.unique(arr["d"])) <= set(range(5))
    colours = np.array([p[0, 0] for p in _photos().values()])
    for x, s, d in zip(arr["x"], arr["s"], arr["d"], strict=True):
        want = np.where(s[..., None], 255 - colours[d], colours[d])
        np.testing.assert_array_equal(x, want)
    assert len(np.unique(arr["d"])) == 5  # every style drawn
    # Another seed draws other styles.
    polymnist.build(a, seed=4, photos=_photos(), log=lambda m: None)
    assert not np.array_equal(polymnist.load(a, "train")["d"], arr["d"])


def test_crops_come_from_inside_the_photograph():
    rng = generator(0, "t")
    photo = np.arange(30 * 31 * 3, dtype=np.int64).reshape(30, 31, 3) % 256
    digits = np.zeros((50, 28, 28), np.uint8)  # no mask: the crop itself
    x, s, d = polymnist.style_images(digits, [photo.astype(np.uint8)], rng)
    assert not s.any() and (d == 0).all()
    for img in x:  # each crop is a window of the photo
        hits = [(t, lft) for t in range(3) for lft in range(4)
                if np.array_equal(photo[t:t + 28, lft:lft + 28].astype(np.uint8), img)]
        assert hits


def test_a_corrupted_build_is_detected_and_rebuilt(tmp_path):
    write_tiny_mnist(tmp_path)
    logs: list[str] = []
    polymnist.build(tmp_path, photos=_photos(), log=logs.append)
    good = _digest(tmp_path)
    polymnist.build(tmp_path, photos=_photos(), log=logs.append)
    assert "up to date" in logs[-1]
    path = polymnist.folder(tmp_path) / "x_test.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(data))
    assert "does not match" in polymnist.check(tmp_path)
    with pytest.raises(DataError, match="does not match"):
        polymnist.load(tmp_path, "test")
    polymnist.build(tmp_path, photos=_photos(), log=logs.append)
    assert "building again" in logs[-2]
    assert _digest(tmp_path) == good


def test_without_mnist_the_build_says_how_to_fetch_it(tmp_path):
    with pytest.raises(DataError, match="p2pgame data fetch mnist"):
        polymnist.build(tmp_path, photos=_photos(), log=lambda m: None)
