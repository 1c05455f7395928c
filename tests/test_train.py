"""Ray Train data parallelism: identical replicas, 2 workers == 1 worker, resume after a killed worker.

One 2-worker run (a tiny U-Net on Kampala) is shared by the tests: as soon as its first checkpoint
appears, the test kills one of its Ray Train worker processes (SIGKILL, from outside: a real fault, no
hook in tileseg).  Its per-step weight traces show the replicas stay identical and match a 1-worker run,
and `--resume` must continue it from the epoch-1 checkpoint.  Ray Train runs cost ~30 s each on the
2-core test machine, hence one crashed run and one resumed run for the whole module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
import ray.train

from tileseg.cli import build_parser, main
from tileseg.model import load_model
from tileseg.options import from_args
from tileseg.train import TrainConfig, Trainer, TrainOptions, prepare, train

STEPS = 3  # steps per epoch
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    """A private 2-CPU Ray for this module (never someone else's cluster)."""
    from tileseg.ray_session import RaySession

    with RaySession(num_cpus=2):  # its own temp dir and token, both gone afterwards
        yield


def parse(argv: list[str]) -> TrainOptions:
    """`tileseg train ARGV`'s options, parsed by the CLI's own parser."""
    return from_args(TrainOptions, build_parser().parse_args(["train", *argv]))


def train_worker_pids() -> list[int]:
    """The Ray Train worker processes of this test's own Ray (descendants of this process only)."""
    mine = psutil.Process(os.getpid()).children(recursive=True)
    found = []
    for proc in mine:
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def kill_a_worker_at_first_checkpoint(run_dir: Path, killed: list[int], timeout: float = 600.0) -> None:
    """Wait for `run_dir`'s first complete checkpoint, then SIGKILL one Ray Train worker process."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "checkpoint_epoch0001" / "state.json").is_file():
            pids = train_worker_pids()
            if pids:
                os.kill(max(pids), signal.SIGKILL)
                killed.append(max(pids))
                return
        time.sleep(0.01)


@pytest.fixture(scope="module")
def crashed_run(ray_local, data_dir, tmp_path_factory):
    """`tileseg train --images kampala --workers 2 ...` with one worker killed after its first checkpoint."""
    root = tmp_path_factory.mktemp("crashed")
    out = root / "model.keras"
    argv = [
        "--images",
        str(data_dir / "kampala"),
        "--out",
        str(out),
        "--workers",
        "2",
        "--arch",
        "unet",
        "--tile",
        "32",
        "--base-filters",
        "4",
        "--depth",
        "2",
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--steps-per-epoch",
        str(STEPS),
        "--classes",
        "background",
        "building",
    ]
    options = parse(argv)
    (root / "trace").mkdir()
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_a_worker_at_first_checkpoint, args=(root / "runs" / "model", killed), daemon=True
    )
    killer.start()
    with pytest.raises(ray.train.TrainingFailedError):
        train(options, trace_dir=root / "trace")
    killer.join(timeout=5)
    assert killed, "no Ray Train worker was killed: the run failed for another reason"
    return {"root": root, "out": out, "argv": argv, "options": options}


def traces(folder: Path, rank: int) -> list[np.ndarray]:
    return [np.load(f) for f in sorted(folder.glob(f"world2_rank{rank}_step*.npy"))]


@pytest.mark.slow
def test_two_workers_hold_identical_weights_and_match_one_worker(crashed_run):
    rank0, rank1 = traces(crashed_run["root"] / "trace", 0), traces(crashed_run["root"] / "trace", 1)
    assert len(rank0) >= STEPS and len(rank1) >= STEPS  # epoch 1 (+ the steps of epoch 2 before the kill)
    for a, b in zip(rank0, rank1, strict=False):
        np.testing.assert_array_equal(a, b)  # all-reduced gradients: the replicas never drift apart

    # The 1-worker reference: the same Trainer step on one replica (in this process, no Ray needed).
    options = TrainConfig.from_mapping({**crashed_run["options"].__dict__, "workers": 1})
    trainer = Trainer(prepare(options))
    single: list[np.ndarray] = []
    trainer.train_epoch(0, lambda epoch, step: single.append(trainer.flat_weights()))
    # Same global batch (the sample stream does not depend on the worker count), loss / global batch,
    # gradients summed and BatchNorm statistics synchronised: the same math, so the only differences are
    # float32 summation order (all-reduce, E[x^2] - E[x]^2 moments, oneDNN threading); measured ~1e-6.
    # A step moves weights by ~lr = 1e-3 (Adam), so a mismatch in data, scaling or BN shows at that scale.
    for step in range(STEPS):
        if step:
            assert np.abs(single[step] - single[step - 1]).max() > 1e-4  # the weights do move every step
        np.testing.assert_allclose(rank0[step], single[step], rtol=0, atol=2e-5, err_msg=f"step {step}")


@pytest.mark.slow
def test_killed_worker_then_resume_continues_from_checkpoint(crashed_run, data_dir, monkeypatch):
    out = crashed_run["out"]
    assert not out.exists()
    checkpoints = sorted((out.parent / "runs" / "model").glob("checkpoint_epoch*"))
    assert [c.name for c in checkpoints] == ["checkpoint_epoch0001"]

    # `tileseg train --resume` with a relative data set dir (train/ and val/ splits inside it)
    monkeypatch.chdir(data_dir)
    argv = [a if a != str(data_dir / "kampala") else "kampala" for a in crashed_run["argv"]]
    # The checkpoint is global state, so the run may resume on another worker count (1: cheaper here).
    assert main(["train", *argv, "--workers", "1", "--resume"]) == 0
    model, meta = load_model(out)
    training = meta.training
    assert training["starts"] == [0, 1]  # the resumed run started after epoch 1, not at 0
    assert [h["epoch"] for h in training["history"]] == [1, 2, 3]
    assert training["epochs_run"] == 3
    # A self-describing artifact for `tileseg segment`: bands, normalisation, classes, tile
    assert meta.classes == ("background", "building") and meta.bands == (1, 2, 3)
    assert meta.tile == 32 and meta.arch == "unet"
    assert training["images"] == [str(data_dir / "kampala" / "train")] and training["train_pairs"] == 118
    assert training["val_images"] == [str(data_dir / "kampala" / "val")] and training["val_pairs"] == 29
    assert all(90 < m < 170 for m in meta.mean) and all(30 < s < 80 for s in meta.std)
    assert 0 <= meta.scores["val_iou_building"] <= 1 and training["best"]["val_miou"] == meta.scores["val_miou"]
    assert out.with_name("model_curve.png").stat().st_size > 1000
    probs = model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)
    assert probs.shape == (1, 64, 64, 2)


# --- one IoU for training and `tileseg evaluate` ----------------------------------------------------


def test_validation_iou_equals_evaluate_iou_on_the_same_prediction(data_dir, tmp_path):
    """Training's validation and `tileseg evaluate` score a real prediction of a trained tiny model alike."""
    import dataclasses

    from tileseg import store as tstore
    from tileseg.evaluate import evaluate
    from tileseg.grid import Window
    from tileseg.raster import open_info

    options = parse(
        ["--images", str(data_dir / "kampala"), "--out", str(tmp_path / "m.keras"), "--arch", "unet"]
        + ["--tile", "32", "--base-filters", "4", "--depth", "2", "--batch-size", "8", "--epochs", "1"]
        + ["--steps-per-epoch", "12", "--lr", "0.01", "--class-weights", "1", "3"]
    )
    plan = prepare(options)
    trainer = Trainer(plan)
    assert trainer._gradients._jit_compile  # one worker: forward and backward compiled by XLA
    trainer.train_epoch(0)
    pair = next(p for p in plan.val_pairs if p.image.name == "OAM-1238424-1046544-21.tif")
    trainer.plan = dataclasses.replace(plan, val_pairs=(pair,))
    building_iou = trainer.validate()["val_iou_building"]
    assert 0 < building_iou < 1  # a real, non-trivial case: some buildings found, not all

    pred = trainer.predict_pair(pair)
    store, name = tmp_path / "pred.zarr", "chip"
    tstore.create_image_group(str(store), name, open_info(pair.image), classes=plan.classes, chunk=256, num_blocks=1)
    tstore.write_block(str(store), name, Window(0, 0, pair.height, pair.width), pred, None, 0)
    tstore.finish_image(str(store), name, {})
    result = evaluate(store, pair.mask, classes=plan.classes, out_dir=tmp_path / "eval", quicklooks=False)
    assert result["overall"]["per_class"]["building"]["iou"] == building_iou


# --- options, run directory, entry points -----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--tile", "100"], "--tile"),
        (["--batch-size", "5", "--workers", "2"], "--batch-size"),
        (["--classes", "only"], "--classes"),
        (["--class-weights", "1", "2", "3"], "--class-weights"),
        (["--masks", "a", "b"], "--masks"),
        (["--name", "../elsewhere"], "--name"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--labels", "a.geojson", "b.geojson"], "--labels"),
        (["--aoi", "aoi.geojson"], "--aoi"),
        (["--aug-jpeg", "200"], "--aug-jpeg"),
        (["--aug-scale", "0.5"], "--aug-scale"),
        (["--freeze-encoder-epochs", "1"], "--freeze-encoder-epochs"),
        (["--init", "model.h5"], "--init"),
    ],
)
def test_bad_options_fail_naming_the_option_before_anything_is_written(tmp_path, capsys, argv, flag):
    out = tmp_path / "new" / "model.keras"
    assert main(["train", "--images", str(tmp_path / "nowhere"), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}:") and err.count("\n") == 1
    assert not (tmp_path / "new").exists()


def test_a_fresh_run_deletes_only_its_own_run_directory(data_dir, tmp_path, capsys):
    precious = tmp_path / "mine" / "notes"
    precious.mkdir(parents=True)
    (precious / "keep.txt").write_text("not tileseg's")
    argv = ["--images", str(data_dir / "kampala"), "--out", str(tmp_path / "m.keras"), "--tile", "32", "--depth", "2"]
    assert main(["train", *argv, "--storage-path", str(tmp_path / "mine"), "--name", "notes"]) == 2
    assert "refusing to delete" in capsys.readouterr().err
    assert (precious / "keep.txt").read_text() == "not tileseg's"


def test_jobs_train_py_has_the_same_options_as_tileseg_train():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    job = subprocess.run([sys.executable, "jobs/train.py", "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    cli = subprocess.run(
        [sys.executable, "-m", "tileseg.cli", "train", "--help"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert job.returncode == 0 and cli.returncode == 0
    assert "--images" in cli.stdout and "--storage-path" in cli.stdout
    assert job.stdout == cli.stdout


def test_bfloat16_on_a_cpu_without_it_is_warned_about():
    """mixed_bfloat16 is emulated on CPUs without avx512_bf16/amx_bf16 (measured 7.7x float32's step time)."""
    from tileseg.train.loop import cpu_flags, precision_warning

    avx2 = frozenset({"avx2", "fma", "sse4_2"})
    assert "float32" in precision_warning("mixed_bfloat16", 0, avx2)
    assert precision_warning("float32", 0, avx2) is None
    assert precision_warning("mixed_bfloat16", 1, avx2) is None  # a GPU trains it
    assert precision_warning("mixed_bfloat16", 0, avx2 | {"amx_bf16"}) is None
    assert precision_warning("mixed_bfloat16", 0, frozenset()) is None  # flags unknown: no guess
    assert isinstance(cpu_flags(), frozenset)
