"""Ray Train data parallelism: identical replicas, 2 workers == 1 worker, resume after a killed worker.

One 2-worker run (a tiny U-Net on Kampala) whose last worker kills its own process during epoch 2 is
shared by the tests: its per-step weight traces show the replicas stay identical and match a 1-worker
run, and `--resume` must continue it from the epoch-1 checkpoint.  Ray Train runs cost ~30 s each on
the 2-core test machine, hence one crashed run and one resumed run for the whole module.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.train

from tileseg.model import load_model
from tileseg.train import TrainConfig, Trainer, add_arguments, prepare, run_from_args, train

STEPS = 3  # steps per epoch


@pytest.fixture(scope="module")
def ray_local():
    """A private 2-CPU Ray for this module (never someone else's cluster)."""
    ray.init(
        num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="tsray-"), _node_ip_address="127.0.0.1"
    )
    yield
    ray.shutdown()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


@pytest.fixture(scope="module")
def crashed_run(ray_local, data_dir, tmp_path_factory):
    """`tileseg train --images kampala --workers 2 ...` whose rank-1 process os._exit()s in epoch 2."""
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
    config = {**vars(parser().parse_args(argv)), "trace_dir": str(root / "trace"), "fail_at_epoch": 2}
    (root / "trace").mkdir()
    with pytest.raises(ray.train.TrainingFailedError):
        train(config)
    return {"root": root, "out": out, "argv": argv, "config": config}


def traces(folder: Path, rank: int) -> list[np.ndarray]:
    return [np.load(f) for f in sorted(folder.glob(f"world2_rank{rank}_step*.npy"))]


def test_two_workers_hold_identical_weights_and_match_one_worker(crashed_run):
    rank0, rank1 = traces(crashed_run["root"] / "trace", 0), traces(crashed_run["root"] / "trace", 1)
    assert len(rank0) >= STEPS and len(rank1) >= STEPS  # epoch 1 (+ the first step of epoch 2)
    for a, b in zip(rank0, rank1, strict=False):
        np.testing.assert_array_equal(a, b)  # all-reduced gradients: the replicas never drift apart

    # The 1-worker reference: the same Trainer step on one replica (in this process, no Ray needed).
    config = {k: v for k, v in crashed_run["config"].items() if k not in ("trace_dir", "fail_at_epoch")}
    trainer = Trainer(prepare(TrainConfig.from_mapping({**config, "workers": 1})))
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


def test_killed_worker_then_resume_continues_from_checkpoint(crashed_run, data_dir, monkeypatch):
    out = crashed_run["out"]
    assert not out.exists()
    checkpoints = sorted((out.parent / "runs" / "model").glob("checkpoint_epoch*"))
    assert [c.name for c in checkpoints] == ["checkpoint_epoch0001"]

    # `tileseg train --resume` with a relative data set dir (train/ and val/ splits inside it)
    monkeypatch.chdir(data_dir)
    argv = [a if a != str(data_dir / "kampala") else "kampala" for a in crashed_run["argv"]]
    # The checkpoint is global state, so the run may resume on another worker count (1: cheaper here).
    assert run_from_args(parser().parse_args([*argv, "--workers", "1", "--resume"])) == 0
    model, meta = load_model(out)
    training = meta["training"]
    assert training["starts"] == [0, 1]  # the resumed run started after epoch 1, not at 0
    assert [h["epoch"] for h in training["history"]] == [1, 2, 3]
    assert training["epochs_run"] == 3
    # A self-describing artifact for `tileseg segment`: bands, normalisation, classes, tile
    assert meta["classes"] == ["background", "building"] and meta["bands"] == [1, 2, 3]
    assert meta["tile"] == 32 and meta["arch"] == "unet"
    assert training["images"] == [str(data_dir / "kampala" / "train")] and training["train_pairs"] == 118
    assert training["val_images"] == [str(data_dir / "kampala" / "val")] and training["val_pairs"] == 29
    assert all(90 < m < 170 for m in meta["mean"]) and all(30 < s < 80 for s in meta["std"])
    assert 0 <= meta["val_iou_building"] <= 1 and training["best"]["val_miou"] == meta["val_miou"]
    assert out.with_name("model_curve.png").stat().st_size > 1000
    probs = model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)
    assert probs.shape == (1, 64, 64, 2)
