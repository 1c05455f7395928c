"""The model call as a plain TensorFlow graph and compiled by XLA, side by side in one process.

`TilePredictor` runs full batches compiled by XLA (`jit_compile=True`) and an image's own small batches
as a plain graph. This bench shows why: per model, the first call (trace, and compile for XLA), the
best time per tile over interleaved rounds, the peak resident memory each adds, and how far the two
outputs are apart.

    python bench/xla.py --rounds 5 --threads 2     # the shipped model and the 1x1 null model
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tileseg
from tileseg.artifact import resolve_model  # noqa: E402
from tileseg.predict import TilePredictor  # noqa: E402

TILE = 256


def null_model(path: Path) -> Path:
    """A 1x1 convolution artifact: the model costs (almost) nothing, as in bench/segment.py --part null."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from segment import make_null_model

    make_null_model(str(path), 0)
    return path


def compare(model: str | Path, batch: int, threads: int, rounds: int) -> dict[str, float]:
    import tensorflow as tf

    pred = TilePredictor(model, batch_size=batch, threads=threads)
    x = tf.constant(pred.meta.normalise(np.random.default_rng(0).random((batch, TILE, TILE, 3), np.float32) * 255))
    runs = {
        "graph": tf.function(lambda t: pred.model(t, training=False)),
        "xla": tf.function(lambda t: pred.model(t, training=False), jit_compile=True),
    }
    first, out = {}, {}
    for name, f in runs.items():
        start = time.perf_counter()
        out[name] = f(x).numpy()
        first[name] = time.perf_counter() - start
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):  # interleaved, so that load on the machine hits both alike
        for name, f in runs.items():
            start = time.perf_counter()
            f(x).numpy()
            best[name] = min(best[name], time.perf_counter() - start)
    return {
        "graph_ms": 1000 * best["graph"] / batch,
        "xla_ms": 1000 * best["xla"] / batch,
        "speedup": best["graph"] / best["xla"],
        "graph_first_s": first["graph"],
        "xla_first_s": first["xla"],
        "max_diff": float(np.abs(out["graph"] - out["xla"]).max()),
        "mask_diff": int((out["graph"].argmax(-1) != out["xla"].argmax(-1)).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=None, help="artifacts (default: shipped and null)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = a.model or [str(resolve_model(None)), str(null_model(Path(tmp) / "null.keras"))]
        print(f"batch {a.batch} of {TILE}x{TILE}, threads {a.threads}, best of {a.rounds} interleaved rounds")
        print(
            "| model | graph ms/tile | XLA ms/tile | speedup | first call graph / XLA s | max prob diff"
            " | mask px differing |"
        )
        print("|---|---:|---:|---:|---|---:|---:|")
        for m in models:
            r = compare(m, a.batch, a.threads, a.rounds)
            print(
                f"| {Path(m).name} | {r['graph_ms']:.2f} | {r['xla_ms']:.2f} | {r['speedup']:.2f}x"
                f" | {r['graph_first_s']:.2f} / {r['xla_first_s']:.2f} | {r['max_diff']:.1e}"
                f" | {r['mask_diff']} of {a.batch * TILE * TILE} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
