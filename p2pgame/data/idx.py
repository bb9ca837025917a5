"""The IDX format of MNIST-like data sets: read, write, check.

An IDX file is a 4-byte magic ``00 00 <type> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the values in C order, big-endian. Files whose name ends in
``.gz`` are gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

# IDX type code -> big-endian dtype.
_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_BY_KIND: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): c for c, dt in _CODES.items()}


def _code_for(dtype: np.dtype) -> int:
    dtype = np.dtype(dtype)
    code = _BY_KIND.get((dtype.kind, dtype.itemsize))
    if code is None:
        allowed = ", ".join(str(dt.newbyteorder("=")) for dt in _CODES.values())
        raise ValueError(f"IDX cannot store dtype {dtype}; allowed: {allowed}")
    return code


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (uncompressed)."""
    array = np.asarray(array)
    code = _code_for(array.dtype)
    if array.ndim > 255:
        raise ValueError(f"IDX stores at most 255 dimensions, got {array.ndim}")
    if any(s >= 2**32 for s in array.shape):
        raise ValueError(f"IDX sizes must fit in 32 bits, got shape {array.shape}")
    header = bytes((0, 0, code, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_CODES[code]).tobytes()
    return header + body


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path``; gzip-compressed when the name ends in ``.gz``."""
    path = Path(path)
    data = idx_bytes(array)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)


def _read_bytes(path: Path, limit: int | None = None) -> bytes | bytearray:
    """The (decompressed) content of ``path``; at most ``limit`` bytes when given."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        with open(path, "rb") as f:
            if limit is not None:
                return f.read(limit)
            # A writable buffer, so numpy (and torch.from_numpy) get a writable array.
            buf = bytearray(os.fstat(f.fileno()).st_size)
            n = f.readinto(buf)
            if n != len(buf):
                del buf[n:]
            rest = f.read()
            return buf + rest if rest else buf
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file or truncated ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _parse_header(path: Path, data: bytes | bytearray) -> tuple[np.dtype, tuple[int, ...], int]:
    """(big-endian dtype, shape, header length) of the IDX bytes ``data``."""
    if len(data) < 4:
        raise DataError(f"{path}: truncated: {len(data)} bytes, an IDX magic needs 4")
    z0, z1, code, ndim = data[0], data[1], data[2], data[3]
    if z0 != 0 or z1 != 0 or code not in _CODES:
        raise DataError(
            f"{path}: bad magic {bytes(data[:4]).hex(' ')}: not an IDX file "
            f"(expected 00 00 <type in {sorted(f'{c:02x}' for c in _CODES)}> <ndim>)"
        )
    hlen = 4 + 4 * ndim
    if len(data) < hlen:
        raise DataError(
            f"{path}: truncated header: {ndim} dimensions need {hlen} bytes, file has {len(data)}"
        )
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    return _CODES[code], tuple(int(s) for s in shape), hlen


def read_idx_header(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...]]:
    """(big-endian dtype, shape) from the header of an IDX file, without reading the body."""
    path = Path(path)
    head = _read_bytes(path, limit=4)
    if len(head) == 4:
        head = _read_bytes(path, limit=4 + 4 * head[3])
    dtype, shape, _ = _parse_header(path, head)
    return dtype, shape


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file (plain or ``.gz``), in native byte order."""
    path = Path(path)
    data = _read_bytes(path)
    dtype, shape, hlen = _parse_header(path, data)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    need = hlen + count * dtype.itemsize
    if len(data) < need:
        raise DataError(
            f"{path}: truncated: header says shape {shape} of {dtype.newbyteorder('=')} "
            f"({need} bytes), file has {len(data)} bytes"
        )
    if len(data) > need:
        raise DataError(
            f"{path}: {len(data) - need} trailing bytes after the {need} that shape {shape} needs"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=hlen).reshape(shape)
    native = dtype.newbyteorder("=")
    if dtype.itemsize > 1 and native != dtype:
        arr = arr.astype(native)
    elif isinstance(data, bytes):
        arr = arr.copy()  # frombuffer on bytes is read-only
    return arr
