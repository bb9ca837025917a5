"""Cost of the wire-format change of issue #8 (v1 -> v2 header, typed topics), per message.

Encodes and decodes the same messages with the codec before the change (taken from git,
commit 03ec1c4) and with the current one, in one process, best of 5 repeats:

    .venv/bin/python bench/codec_change.py

Prints a table and, as its last line, one JSON object.  A ratio is old time / new time
(above 1: the new codec is faster).  Header bytes must be equal: byte counts of runs do not
change.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

import benchenv
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pgame.bus import codec as new  # noqa: E402
from p2pgame.bus.topics import Topic  # noqa: E402

OLD_COMMIT = "03ec1c4"


def old_codec():
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:p2pgame/bus/codec.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_codec.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_codec", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_codec"] = mod  # dataclasses look their module up while decorating
    spec.loader.exec_module(mod)
    return mod


def best_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> int:
    env = benchenv.environment()
    old = old_codec()
    rng = np.random.default_rng(0)
    cases = {
        "binary200": {"z0": rng.random((200, 30)) < .5, "z1": rng.random((200, 100)) < .5,
                      "x": rng.random((200, 1, 28, 28)) < .5},
        "float200": {"x": rng.random((200, 784)).astype(np.float32)},
    }
    topic = Topic("samples", 0, "x")  # the runtime builds each of its topics once
    out = {}
    print(f"{'case':<10}{'dec old':>9}{'dec new':>9}{'ratio':>7}{'enc old':>9}{'enc new':>9}"
          f"{'ratio':>7}{'hdr old':>9}{'hdr new':>9}")
    for name, t in cases.items():
        fo = [bytes(f) for f in old.encode(old.Envelope(0, "samples/0/x", 5, t,
                                                       meta={"last": True}))]
        fn = [bytes(f) for f in new.encode(new.Envelope(0, topic, 5, t, last=True))]
        row = {
            "decode_old_us": best_us(lambda fo=fo: old.decode(fo), 2000),
            "decode_new_us": best_us(lambda fn=fn: new.decode(fn), 2000),
            "encode_old_us": best_us(lambda t=t: old.encode(
                old.Envelope(0, "samples/0/x", 5, t, meta={"last": True})), 1000),
            "encode_new_us": best_us(lambda t=t: new.encode(
                new.Envelope(0, topic, 5, t, last=True)), 1000),
            "header_bytes_old": len(fo[1]) + len(fo[0]),
            "header_bytes_new": len(fn[1]) + len(fn[0]),
        }
        row["decode_ratio"] = row["decode_old_us"] / row["decode_new_us"]
        row["encode_ratio"] = row["encode_old_us"] / row["encode_new_us"]
        out[name] = {k: round(v, 3) for k, v in row.items()}
        print(f"{name:<10}{row['decode_old_us']:>9.1f}{row['decode_new_us']:>9.1f}"
              f"{row['decode_ratio']:>7.2f}{row['encode_old_us']:>9.1f}"
              f"{row['encode_new_us']:>9.1f}{row['encode_ratio']:>7.2f}"
              f"{row['header_bytes_old']:>9}{row['header_bytes_new']:>9}")
    out["env"] = benchenv.finished(env)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
