"""Discovery and group-naming benchmark: time per path at 10,000 vs 100,000 inputs, and old vs new naming.

Builds a temporary tree of empty `.tif` files (100 per directory, the same 100 file names in every
directory, so stems repeat as in tile sets split by date or region), then times, best of --repeats:
the bare directory walk, `discover([root])`, `discover(["root/**/*.tif"])` and `group_names` on the
discovered paths. Discovery must not open files: a Python audit hook counts `open` events during it
(GDAL is never called there). It does `os.stat` each raster once, for its (device, inode) identity; the
walk-only column shows what is left without it. Then the quadratic one-by-one `group_name` as it was
before `group_names` (frozen copy below) and `group_names` on the same 8,000 names, unique and repeated.

    .venv/bin/python bench/discover.py [--sizes 10000 100000] [--repeats 3] [--old-names 8000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

from tileseg import store
from tileseg.raster import _walk, discover, path_stem

PER_DIR = 100
_OPENS = [0]


def _count_opens(event: str, args: tuple) -> None:
    """Audit hook: count files opened from Python (builtin open, os.open)."""
    if event == "open":
        _OPENS[0] += 1


def make_tree(root: Path, n: int) -> None:
    """`n` empty .tif files, PER_DIR per directory, two directory levels (g000/d000/tile_00.tif)."""
    for i in range(0, n, PER_DIR):
        d = root / f"g{i // (PER_DIR * 100):03d}" / f"d{(i // PER_DIR) % 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(min(PER_DIR, n - i)):
            (d / f"tile_{j:02d}.tif").touch()


def best(fn: Callable[[], object], repeats: int) -> tuple[tuple[float, float], object]:
    """((best wall s, best CPU s), last result) of `repeats` calls; CPU time resists a loaded machine."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return (min(walls), min(cpus)), out


def group_name_before(path: str, taken: set[str]) -> str:
    """store.group_name as it was before group_names (commit 0f626e9): quadratic when called in a loop."""
    stem = path_stem(os.fspath(path).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1])
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    safe = "_".join(store._SAFE.findall(ascii_stem)) if ascii_stem else ""
    safe = safe.lstrip("._-")[:100].rstrip(".") or "image"
    lowered = {t.lower() for t in taken} | store._RESERVED
    name, n = safe, 1
    while name.lower() in lowered:
        n += 1
        name = f"{safe}-{n}"
    taken.add(name)
    return name


def bench_size(n: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(wall s, CPU s) per stage for a tree of `n` files, and files opened while discovering (must be 0)."""
    with tempfile.TemporaryDirectory(prefix="tileseg-bench-discover-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_tree(root, n)
        build = time.perf_counter() - t
        walk, _ = best(lambda: _walk(str(root)), repeats)
        _OPENS[0] = 0
        found, (paths, skipped) = best(lambda: discover([str(root)]), repeats)
        pattern, (gpaths, _) = best(lambda: discover([str(root / "**" / "*.tif")]), repeats)
        opens = _OPENS[0]
        naming, names = best(lambda: store.group_names(paths), repeats)
    assert len(paths) == len(gpaths) == n and not skipped and opens == 0, (len(paths), len(gpaths), opens)
    assert len(set(names)) == n
    stages = {"walk": walk, "discover": found, "glob": pattern, "names": naming}
    return {"build": (build, 0.0), "opens": (opens, 0.0), **stages}


def bench_old_names(n: int) -> list[tuple[str, tuple[float, float], tuple[float, float]]]:
    """(inputs, old (wall, CPU) s, new (wall, CPU) s) naming `n` paths: unique stems, and stems repeated."""
    rows = []
    cases = {
        "unique stems": [f"scenes/scene_{i:05d}.tif" for i in range(n)],
        f"{PER_DIR} stems x {n // PER_DIR} dirs": [f"d{i // PER_DIR}/tile_{i % PER_DIR:02d}.tif" for i in range(n)],
    }
    for label, paths in cases.items():
        taken: set[str] = set()
        old_s, old = best(lambda paths=paths, taken=taken: [group_name_before(p, taken) for p in paths], 1)
        new_s, new = best(lambda paths=paths: store.group_names(paths), 3)
        assert new == old, label
        rows.append((label, old_s, new_s))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old-names", type=int, default=8_000)
    args = ap.parse_args()
    sys.addaudithook(_count_opens)
    stages = ("walk", "discover", "glob", "names")

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; best of {args.repeats}")
    print("wall s / CPU µs per path; discover: discover([root]); glob: discover(['root/**/*.tif'])")
    print("| paths | tree built s | walk only | discover | glob | group_names | files opened |")
    print("|---|---|---|---|---|---|---|")
    per_path: dict[int, dict[str, float]] = {}
    for n in args.sizes:
        r = bench_size(n, args.repeats)
        per_path[n] = {k: r[k][1] / n * 1e6 for k in stages}
        cells = " | ".join(f"{r[k][0]:.3f} s / {per_path[n][k]:.2f} µs" for k in stages)
        print(f"| {n:,} | {r['build'][0]:.1f} | {cells} | {r['opens'][0]:.0f} |")
    if len(args.sizes) >= 2:
        small, large = min(args.sizes), max(args.sizes)
        ratios = ", ".join(f"{k} {per_path[large][k] / per_path[small][k]:.2f}x" for k in stages)
        print(f"\nCPU time per path, {large:,} vs {small:,} (goal <= 2.0): {ratios}")

    print(f"\n| {args.old_names:,} names | group_name one by one (before) | group_names | speed-up (CPU) |")
    print("|---|---|---|---|")
    for label, old_s, new_s in bench_old_names(args.old_names):
        old_cell = f"{old_s[0]:.2f} s (CPU {old_s[1]:.2f} s)"
        new_cell = f"{new_s[0] * 1e3:.1f} ms (CPU {new_s[1] * 1e3:.1f} ms)"
        print(f"| {label} | {old_cell} | {new_cell} | {old_s[1] / new_s[1]:.0f}x |")


if __name__ == "__main__":
    main()
