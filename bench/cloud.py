"""Object storage vs local disk: the same segment job reading from and writing to a local S3 server
(moto, on 127.0.0.1) against reading from and writing to local disk, in one run.

Both arms segment the Kampala scene with the same model, tiling and block plan on one embedded Ray
(started once, so its start-up is not in either arm), alternating disk / S3 `--rounds` times; the best
wall time of each arm is kept. Reported: the end-to-end time ratio disk / S3 (the issue asks >= 0.9),
and the S3 arm's HTTP requests, counted at the server (every request the driver and the Ray workers
make passes its request log), by kind and per block:

    chunk PUT     a mask (or probability) chunk written
    flag PUT      a block's completion flag
    metadata      zarr.json reads and writes (GET, HEAD, PUT)
    listing       bucket listings (list-type=2)
    run files     .tileseg/ (lock, summary.json) reads and writes
    input read    GETs and HEADs of the input GeoTIFF (GDAL's ranged reads)
    other         anything else (bucket HEADs, deletes)

    .venv/bin/python bench/cloud.py                         # the scene, block 1024 / chunk 1024, 2 rounds
    .venv/bin/python bench/cloud.py --rounds 3 --json /tmp/cloud.json

The model is an attention U-Net with seeded random weights (`--base-filters`, `--depth`); a small one
makes the job I/O-heavy, the harshest case for the ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCENE = Path(os.environ.get("TILESEG_DATA", REPO.parent / "shared" / "data")) / "kampala/scene/kampala_z21_image.tif"
BUCKET = "tileseg-bench"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')


class RequestLog(logging.Handler):
    """Every request moto's server answers (werkzeug logs one line each), classified."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.kinds: Counter[str] = Counter()
        self.recording = False

    def emit(self, record: logging.LogRecord) -> None:
        m = _LINE.search(_ANSI.sub("", record.getMessage()))  # werkzeug colours lines other than 200s
        if m and self.recording:
            self.kinds[classify(m["method"], m["path"])] += 1


def classify(method: str, path: str) -> str:
    """The kind of one S3 request (see the module docstring)."""
    if "list-type=2" in path:
        return "listing"
    if "/.tileseg/" in path:
        return "run files"
    if path.endswith("zarr.json"):
        return "metadata"
    if "/blocks_done/c/" in path:
        return "flag PUT" if method == "PUT" else "flag read"
    if re.search(r"/(mask|probability)/c/", path):
        return "chunk PUT" if method == "PUT" else "chunk read"
    if path.split("?")[0].lower().endswith((".tif", ".tiff")):
        return "input read"
    return "other"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(path: Path, base_filters: int, depth: int) -> Path:
    import keras

    from tileseg.model import build_model, default_metadata, save_model

    keras.utils.set_random_seed(7)
    model = build_model("attention_unet", num_classes=2, bands=3, base_filters=base_filters, depth=depth)
    meta = default_metadata(
        model, classes=["background", "building"], mean=[110.0, 105.0, 95.0], std=[55.0, 50.0, 50.0], tile=256,
        training={"note": "random weights, for the bench"},
    )  # fmt: skip
    return save_model(model, path, meta)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--base-filters", type=int, default=4)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ACCESS_KEY_ID="tileseg-bench-access", AWS_SECRET_ACCESS_KEY="tileseg-bench-secret-7e21",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_EC2_METADATA_DISABLED="true",
    )  # fmt: skip
    log = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(log)
    werkzeug.propagate = False

    import boto3

    from tileseg.ray_session import RaySession
    from tileseg.segment import segment

    tmp = Path(tempfile.mkdtemp(prefix="tileseg-bench-cloud-"))
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        scenes = tmp / "scenes"
        scenes.mkdir()
        shutil.copy(SCENE, scenes / SCENE.name)
        client.upload_file(str(SCENE), BUCKET, f"scenes/{SCENE.name}")
        model = make_model(tmp / "model.keras", args.base_filters, args.depth)
        common = dict(model=model, block=args.block, chunk=args.chunk, progress=False)
        arms = {"disk": (str(scenes), lambda i: str(tmp / f"run{i}.zarr")),
                "s3": (f"s3://{BUCKET}/scenes/", lambda i: f"s3://{BUCKET}/run{i}.zarr")}  # fmt: skip
        times: dict[str, list[float]] = {"disk": [], "s3": []}
        requests: list[Counter[str]] = []
        blocks = 0
        load = [os.getloadavg()[0]]
        with RaySession(num_cpus=args.num_cpus):
            segment(inputs=[str(scenes)], out=str(tmp / "warm.zarr"), **common)  # workers and TF warmed once
            for r in range(args.rounds):
                for arm in ("disk", "s3") if r % 2 == 0 else ("s3", "disk"):
                    inputs, out = arms[arm]
                    log.kinds = Counter()
                    log.recording = arm == "s3"
                    t0 = time.perf_counter()
                    summary = segment(inputs=[inputs], out=out(r), **common)
                    times[arm].append(time.perf_counter() - t0)
                    log.recording = False
                    assert summary.ok, summary.images
                    blocks = summary.images[0].blocks
                    if arm == "s3":
                        requests.append(log.kinds)
                    print(f"round {r + 1} {arm:4s} {times[arm][-1]:7.1f} s", flush=True)
        load.append(os.getloadavg()[0])
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    best = {arm: min(t) for arm, t in times.items()}
    kinds = requests[-1]
    total = sum(kinds.values())
    result = {
        "scene": SCENE.name,
        "block": args.block,
        "chunk": args.chunk,
        "blocks": blocks,
        "rounds": args.rounds,
        "seconds": times,
        "best": best,
        "ratio_disk_over_s3": best["disk"] / best["s3"],
        "requests": dict(sorted(kinds.items())),
        "requests_total": total,
        "requests_per_block": total / blocks,
        "load": load,
    }
    print(f"\nbest: disk {best['disk']:.1f} s, s3 {best['s3']:.1f} s, ratio disk/s3 {result['ratio_disk_over_s3']:.2f}")
    print(f"S3 requests of one job ({blocks} blocks): {total} ({total / blocks:.1f} per block)")
    for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:12s} {n:5d}  ({n / blocks:.1f} per block)")
    print(f"load average {load[0]:.1f} -> {load[1]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
