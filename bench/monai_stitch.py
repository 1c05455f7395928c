"""Stitching core vs MONAI's `sliding_window_inference`: same image, grid, window and model, in one run.

Each arm runs in a fresh subprocess, alternating (tileseg, MONAI; then MONAI, tileseg; ...); the best of
--rounds is kept per arm.  tileseg runs in this interpreter (the project's venv, this checkout on
PYTHONPATH); MONAI in --monai-python, a separate venv (torch and monai are not tileseg dependencies):

    python3 -m venv /tmp/monai-venv
    /tmp/monai-venv/bin/pip install torch==2.13.0      # CPU build; first, so monai does not pull another
    /tmp/monai-venv/bin/pip install monai numpy psutil

    nice -n 10 .venv/bin/python bench/monai_stitch.py [--size 10000] [--rounds 2] [--threads 1]

Setting (both arms): a --size^2 x 3 float32 image drawn from a seeded generator in each process and
allocated (in the arm's own layout: (H, W, C) for tileseg, (1, C, H, W) for MONAI) before anything is
measured; tile/roi 256, overlap 64 px (MONAI: overlap=0.25, the same grid: origins every 192 px, the last
snapped to the edge); gaussian blending (tileseg's `gaussian`, sigma = tile / 8 at pixel centres, scaled
to a maximum of 1 and floored at 1e-3; MONAI's mode="gaussian" with its default sigma_scale=0.125, also
sigma = 32 px at pixel centres and clamped at 1e-3, but not rescaled: its maximum is 0.99988, which
cancels in the weighted mean); a trivial model, the same per-pixel affine map from 3 bands to 2 classes
(on each side in its cheapest form found: a float32 matmul over the band axis of tileseg's (n, t, t, 3)
batch, 19 ms per batch of 16 here; plane-wise in-place multiply-adds on MONAI's (n, 3, t, t) batch, 4 ms
(torch's 1x1 `conv2d` took 110 ms); the model's time is reported apart); batch = sw_batch_size = --batch; CPU,
--threads threads for torch, OpenMP, BLAS (NumPy's element-wise work is single-threaded anyway).

Measured per arm: wall time of the stitching call (`predict_array(block=None)` /
`sliding_window_inference`), of which the model calls took `model s`; the call's CPU seconds (user + sys,
getrusage, all threads) and the model's (thread time), which a loaded machine distorts far less; the
process's peak RSS during the call minus its RSS right before (the kernel's high-water mark, reset just
before the call through /proc/self/clear_refs; a 2 ms sampling thread as a fallback and check), and the
output's size: working memory = that increase minus the output.  The model is per-pixel, so the exact
stitched answer is the model applied to the image: both outputs are checked against it and against each
other (argmax agreement) on a strided subsample.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TILE, OVERLAP, BATCH, SEED = 256, 64, 16, 0
# The trivial model: probs[k] = sum_c W[k, c] * x[c] + B[k], for 3 bands -> 2 classes.
W = ((0.6, 0.3, 0.1), (0.2, 0.3, 0.5))
B = (0.05, 0.0)
DEFAULT_MONAI_PYTHON = "/tmp/monai-venv/bin/python"
ROOT = Path(__file__).resolve().parent.parent


def _set_threads(threads: int) -> None:
    """Thread count for every pool the arms may use; must run before numpy/torch are imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(threads)


def make_image(size: int):
    """The (size, size, 3) float32 test image, the same in every process."""
    import numpy as np

    return np.random.default_rng(SEED).random((size, size, 3), dtype=np.float32)


def exact(pixels):
    """The trivial model applied to (..., 3) pixels in float64: what any stitching must return."""
    import numpy as np

    return pixels.astype(np.float64) @ np.array(W).T + np.array(B)


def numpy_model():
    """tileseg's side of the trivial model: (n, t, t, 3) float32 -> (n, t, t, 2) float32."""
    import numpy as np

    w = np.array(W, dtype=np.float32).T.copy()  # (3, 2)
    b = np.array(B, dtype=np.float32)

    def predict(batch: np.ndarray) -> np.ndarray:
        out = batch @ w  # the fastest of matmul, einsum, tensordot, plane-wise on NHWC here
        out += b
        return out

    return predict


class Memory:
    """Peak RSS during a `with` block minus RSS right before it, in bytes.

    Uses the kernel's high-water mark (VmHWM), reset on entry by writing 5 to /proc/self/clear_refs;
    a sampling thread (every 2 ms) gives a lower bound where that reset is not allowed.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.before = self.peak = self.sampled = 0
        self.hwm = False

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, self._status("VmRSS"))
            self._stop.wait(self.interval)

    def __enter__(self) -> Memory:
        self._usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm = True
        except OSError:
            self.hwm = False
        self.before = self.sampled = self._status("VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sampled = max(self.sampled, self._status("VmRSS"))
        self.peak = max(self._status("VmHWM"), self.sampled) if self.hwm else self.sampled
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.user = usage.ru_utime - self._usage.ru_utime
        self.sys = usage.ru_stime - self._usage.ru_stime
        self.faults = usage.ru_minflt - self._usage.ru_minflt

    @property
    def increase(self) -> int:
        return self.peak - self.before


def _timed(predict, clock: list[float]):
    """`predict` adding its wall seconds to clock[0] and its CPU seconds (this thread's) to clock[1]."""

    def wrapped(batch):
        t, c = time.perf_counter(), time.thread_time()
        out = predict(batch)
        clock[0] += time.perf_counter() - t
        clock[1] += time.thread_time() - c
        return out

    return wrapped


def tileseg_arm(size: int, batch: int, threads: int) -> tuple[dict, object]:
    """Run tileseg's stitching core once; (measurements, (H, W, 2) output)."""
    import numpy as np

    from tileseg.stitch import predict_array

    img = make_image(size)
    predict = numpy_model()
    predict(np.zeros((1, TILE, TILE, 3), np.float32))  # first call outside the measurement
    clock = [0.0, 0.0]
    with Memory() as mem:
        t = time.perf_counter()
        out = predict_array(
            img, _timed(predict, clock), tile=TILE, overlap=OVERLAP, blend="gaussian", block=None, batch_size=batch
        )
        secs = time.perf_counter() - t
    return _result("tileseg", secs, clock, mem, out.nbytes, img.nbytes), out


def monai_arm(size: int, batch: int, threads: int) -> tuple[dict, object]:
    """Run MONAI's sliding_window_inference once; (measurements, (H, W, 2) view of its output)."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(threads)
    hwc = make_image(size)
    img = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))[None]  # (1, 3, H, W), own copy
    del hwc

    def predict(x: torch.Tensor) -> torch.Tensor:
        # Plane by plane, in place: 4 ms per batch of 16 here, where a 1x1 conv2d takes 110 ms.
        out = torch.empty((x.shape[0], len(W), *x.shape[2:]), dtype=x.dtype)
        for k, (wk, bk) in enumerate(zip(W, B, strict=True)):
            torch.mul(x[:, 0], wk[0], out=out[:, k])
            for c in range(1, len(wk)):
                out[:, k].add_(x[:, c], alpha=wk[c])
            out[:, k].add_(bk)
        return out

    clock = [0.0, 0.0]
    with torch.inference_mode():
        predict(torch.zeros((1, 3, TILE, TILE)))  # first call outside the measurement
        with Memory() as mem:
            t = time.perf_counter()
            out = sliding_window_inference(
                img, roi_size=(TILE, TILE), sw_batch_size=batch, predictor=_timed(predict, clock),
                overlap=OVERLAP / TILE, mode="gaussian",
            )  # fmt: skip
            secs = time.perf_counter() - t
    nbytes = out.element_size() * out.nelement()
    res = _result("monai", secs, clock, mem, nbytes, img.element_size() * img.nelement())
    res["versions"] = f"monai {__import__('monai').__version__}, torch {torch.__version__}"
    return res, out[0].numpy().transpose(1, 2, 0)


def _result(arm: str, secs: float, model: list[float], mem: Memory, out_bytes: int, in_bytes: int) -> dict:
    return {
        "arm": arm,
        "seconds": secs,
        "model_seconds": model[0],
        "model_cpu": model[1],
        "cpu_user": mem.user,
        "cpu_sys": mem.sys,
        "page_faults": mem.faults,
        "rss_increase": mem.increase,
        "rss_increase_sampled": mem.sampled - mem.before,
        "hwm": mem.hwm,
        "output_bytes": out_bytes,
        "input_bytes": in_bytes,
        "working": mem.increase - out_bytes,
    }


def run_arm(arm: str, size: int, batch: int, threads: int, sample: str | None, step: int) -> dict:
    """In an arm's subprocess: run it, write a strided subsample of its output to `sample`, return the numbers."""
    import numpy as np

    res, out = (tileseg_arm if arm == "tileseg" else monai_arm)(size, batch, threads)
    if sample:
        np.save(sample, np.ascontiguousarray(out[::step, ::step]))
    return res


def spawn(arm: str, python: str, args, sample: str) -> dict:
    cmd = [
        python, __file__, "--arm", arm, "--size", str(args.size), "--batch", str(args.batch),
        "--threads", str(args.threads), "--sample", sample, "--step", str(args.step),
    ]  # fmt: skip
    env = dict(os.environ)
    if arm == "tileseg":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    else:
        env.pop("PYTHONPATH", None)  # MONAI's venv needs nothing of ours
    _set_threads(args.threads)
    env.update({k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{arm} arm failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(samples: dict[str, str], size: int, step: int) -> dict:
    """Each arm's subsample against the exact answer and the two against each other."""
    import numpy as np

    ref = exact(make_image(size)[::step, ::step])
    outs = {arm: np.load(path).astype(np.float64) for arm, path in samples.items()}
    report = {f"{arm} max|err|": float(np.abs(o - ref).max()) for arm, o in outs.items()}
    a, b = outs["tileseg"], outs["monai"]
    report["max|tileseg - monai|"] = float(np.abs(a - b).max())
    report["argmax agreement"] = float(np.mean(a.argmax(-1) == b.argmax(-1)))
    for arm, o in outs.items():
        report[f"{arm} argmax agreement with exact"] = float(np.mean(o.argmax(-1) == ref.argmax(-1)))
    report["pixels compared"] = int(a.shape[0] * a.shape[1])
    return report


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def cpu(r: dict) -> float:
    return r["cpu_user"] + r["cpu_sys"]


def table(best: dict[str, dict], rounds: dict[str, list[float]]) -> str:
    t, m = best["tileseg"], best["monai"]
    lines = [
        "| arm | best wall s (all rounds) | model wall s | its CPU s (user + sys) | model CPU s | CPU s without "
        "model | RSS increase MiB | output MiB | working MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ("tileseg", "monai"):
        r = best[arm]
        all_s = " / ".join(f"{s:.2f}" for s in rounds[arm])
        lines.append(
            f"| {arm} | {r['seconds']:.2f} ({all_s}) | {r['model_seconds']:.2f} | {cpu(r):.2f} ({r['cpu_user']:.2f} + "
            f"{r['cpu_sys']:.2f}) | {r['model_cpu']:.2f} | {cpu(r) - r['model_cpu']:.2f} | {mib(r['rss_increase'])} | "
            f"{mib(r['output_bytes'])} | {mib(r['working'])} |"
        )
    wall = (t["seconds"] - t["model_seconds"]) / (m["seconds"] - m["model_seconds"])
    lines.append(
        f"| **tileseg / MONAI** | **{t['seconds'] / m['seconds']:.2f}** | (without model: {wall:.2f}) | "
        f"**{cpu(t) / cpu(m):.2f}** | | **{(cpu(t) - t['model_cpu']) / (cpu(m) - m['model_cpu']):.2f}** | | | "
        f"**{t['working'] / m['working']:.3f}** |"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10000, help="image side (default 10000)")
    ap.add_argument("--rounds", type=int, default=2, help="alternations; best kept per arm (default 2)")
    ap.add_argument("--batch", type=int, default=BATCH, help="tileseg batch_size = MONAI sw_batch_size")
    ap.add_argument("--threads", type=int, default=1, help="threads for torch/OpenMP/BLAS, both arms")
    ap.add_argument("--monai-python", default=DEFAULT_MONAI_PYTHON, help="python of the MONAI venv")
    ap.add_argument("--step", type=int, default=7, help="subsample stride of the agreement check")
    ap.add_argument("--json", help="write all measurements here")
    ap.add_argument("--arm", choices=("tileseg", "monai"), help=argparse.SUPPRESS)
    ap.add_argument("--sample", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:  # inside an arm's subprocess
        _set_threads(args.threads)
        print(json.dumps(run_arm(args.arm, args.size, args.batch, args.threads, args.sample, args.step)))
        return

    pythons = {"tileseg": sys.executable, "monai": args.monai_python}
    runs: dict[str, list[dict]] = {"tileseg": [], "monai": []}
    with tempfile.TemporaryDirectory() as tmp:
        samples = {arm: os.path.join(tmp, f"{arm}.npy") for arm in pythons}
        for i in range(args.rounds):
            for arm in ("tileseg", "monai") if i % 2 == 0 else ("monai", "tileseg"):
                res = spawn(arm, pythons[arm], args, samples[arm])
                runs[arm].append(res)
                print(
                    f"round {i + 1} {arm:8s} {res['seconds']:7.2f} s (model {res['model_seconds']:.2f} s, CPU "
                    f"{res['model_cpu']:.2f} s; call's CPU user "
                    f"{res['cpu_user']:.2f} sys {res['cpu_sys']:.2f} s, {res['page_faults']} faults), "
                    f"RSS +{mib(res['rss_increase'])} MiB (sampled +{mib(res['rss_increase_sampled'])}), "
                    f"output {mib(res['output_bytes'])} MiB, working {mib(res['working'])} MiB",
                    flush=True,
                )
        agreement = check(samples, args.size, args.step)
    best = {arm: min(rs, key=lambda r: r["seconds"]) for arm, rs in runs.items()}
    # Working memory is not noisy; report the best arm run's but show the spread in the JSON.
    print()
    print(
        f"{args.size}x{args.size}x3 float32, tile {TILE}, overlap {OVERLAP}, gaussian, batch {args.batch}, "
        f"{args.threads} thread(s), best of {args.rounds}; {runs['monai'][0].get('versions', '')}; "
        f"NUMPY_MADVISE_HUGEPAGE={os.environ.get('NUMPY_MADVISE_HUGEPAGE', 'unset')}"
    )
    print(table(best, {arm: [r["seconds"] for r in rs] for arm, rs in runs.items()}))
    print()
    for k, v in agreement.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "check": agreement}, indent=1))


if __name__ == "__main__":
    main()
