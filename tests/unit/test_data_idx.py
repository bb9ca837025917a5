"""IDX read/write: round trips, header checks and clear errors on corrupt files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from p2pgame.data import DataError
from p2pgame.data.idx import idx_bytes, read_idx, read_idx_header, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 2, 1, 0, 9], dtype=np.uint8),
        np.array([[-3, 1000], [70000, -1]], dtype=np.int32),
        np.linspace(-1.5, 2.5, 6, dtype=np.float32).reshape(3, 2),
        np.array([1e-300, -2.0], dtype=np.float64),
        np.array([-128, 127], dtype=np.int8),
        np.array([-30000, 12], dtype=np.int16),
    ],
    ids=["u8-3d", "u8-1d", "i4", "f4", "f8", "i1", "i2"],
)
def test_round_trip(tmp_path: Path, array: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"x-idx{array.ndim}-ubyte{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=")
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert read_idx_header(path) == (np.dtype(back.dtype).newbyteorder(">"), array.shape)


def test_header_bytes_match_mnist_layout() -> None:
    # MNIST train-images starts 00 00 08 03 then big-endian 60000, 28, 28.
    data = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    assert data[:16] == bytes.fromhex("00000803000000030000001c0000001c")
    assert len(data) == 16 + 3 * 28 * 28
    # Multi-byte values are stored big-endian.
    assert idx_bytes(np.array([1], dtype=np.int32))[8:] == b"\x00\x00\x00\x01"


def test_gz_file_is_really_compressed(tmp_path: Path) -> None:
    path = tmp_path / "a.gz"
    arr = np.zeros((50, 28, 28), dtype=np.uint8)
    write_idx(path, arr)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(path.read_bytes()) == idx_bytes(arr)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.ones((4, 5, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match=r"short.*truncated.*dimensions"):
        read_idx(path)


def test_truncated_gz_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    write_idx(path, np.arange(200, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="labels.gz"):
        read_idx(path)


@pytest.mark.parametrize("head", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"PK\x03\x04"])
def test_bad_magic_names_the_file(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "bogus-idx1-ubyte"
    path.write_bytes(head + b"\x00\x00\x00\x01" + b"\x05")
    with pytest.raises(DataError, match=r"bogus-idx1-ubyte.*bad magic"):
        read_idx(path)


def test_trailing_bytes_rejected(tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.arange(3, dtype=np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="trailing"):
        read_idx(path)


def test_plain_file_with_gz_name_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.gz"
    path.write_bytes(idx_bytes(np.arange(3, dtype=np.uint8)))
    with pytest.raises(DataError, match="fake.gz"):
        read_idx(path)


def test_unsupported_dtype_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint16"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))
