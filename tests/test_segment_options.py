"""The segment job's options and work item: one declaration, one check, one row layout (no Ray needed)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tileseg.cli import build_parser, main
from tileseg.errors import OptionError
from tileseg.grid import plan_blocks
from tileseg.options import cli_fields, flag_of, from_args
from tileseg.segment import SegmentOptions, WorkItem, segment
from tileseg.segment.work import ROW_KEYS

REPO = Path(__file__).resolve().parents[1]

BAD = [  # (arguments, the option the error must name); the tiny model's tiles go by 16, chunk is 1024
    (["--actors", "0"], "--actors"),
    (["--block", "1000"], "--block"),
    (["--block", "0"], "--block"),
    (["--chunk", "0"], "--chunk"),
    (["--tile", "30"], "--tile"),
    (["--tile", "0"], "--tile"),
    (["--overlap", "256"], "--overlap"),
    (["--tile", "64", "--overlap", "-1"], "--overlap"),
    (["--batch-size", "0"], "--batch-size"),
    (["--num-cpus", "0"], "--num-cpus"),
    (["--gpus-per-actor", "-0.5"], "--gpus-per-actor"),
    (["--bands", "1,2"], "--bands"),
    (["--bands", "0,1,2"], "--bands"),
    (["--stall-timeout", "0"], "--stall-timeout"),
    (["--resample", "auto"], "--resample"),  # the tiny model records no training GSD
    (["--resample", "0"], "--resample"),
    (["--resample", "half"], "--resample"),
]


@pytest.mark.parametrize(("args", "flag"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_option_is_one_line_exit_2_and_nothing_written(args, flag, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    rc = main(["segment", str(tmp_path / "in.tif"), "--out", str(out), "--model", str(tiny_model_path), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {flag}:"), err
    assert not out.exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_tile_divisible_by_2_to_the_models_depth_or_by_16_when_unknown(tiny_model_path, tmp_path):
    import json
    import zipfile

    from tileseg.artifact import METADATA_ENTRY, read_metadata
    from tileseg.segment.options import resolve

    assert read_metadata(tiny_model_path).depth is None  # the tiny model does not say: tiles by 16
    opts = SegmentOptions(inputs=["x.tif"], out=str(tmp_path / "o.zarr"), model=str(tiny_model_path), tile=48)
    assert resolve(opts).tiling == resolve(opts).tiling.__class__(tile=48, overlap=12, blend="gaussian", batch_size=16)
    with pytest.raises(OptionError, match="--tile: must be a positive multiple of 16"):
        resolve(dataclasses.replace(opts, tile=36))
    deep = tmp_path / "depth2.keras"  # the same artifact, its metadata saying depth 2: tiles by 4
    with zipfile.ZipFile(tiny_model_path) as zin, zipfile.ZipFile(deep, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == METADATA_ENTRY:
                data = json.dumps({**json.loads(data), "depth": 2}).encode()
            zout.writestr(name, data)
    assert resolve(dataclasses.replace(opts, model=str(deep), tile=36)).tiling.tile == 36
    with pytest.raises(OptionError, match="--tile: must be a positive multiple of 4"):
        resolve(dataclasses.replace(opts, model=str(deep), tile=34))


def test_python_api_checks_the_same_options_before_touching_the_store(tiny_model_path, tmp_path):
    out = tmp_path / "out.zarr"
    with pytest.raises(OptionError, match="--actors"):
        segment(SegmentOptions(inputs=["x.tif"], out=out, model=tiny_model_path, actors=0))
    with pytest.raises(OptionError, match="--stall-timeout"):
        segment(inputs=["x.tif"], out=out, model=tiny_model_path, stall_timeout=-1)
    assert not out.exists()


def test_the_cli_is_generated_from_segment_options():
    """Every field is a CLI option with a help line and (but for the inputs and the store) a default."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command_name").choices["segment"]
    by_dest = {a.dest: a for a in sub._actions}
    fields = dataclasses.fields(SegmentOptions)
    assert {f.name for f, _ in cli_fields(SegmentOptions)} == {f.name for f in fields}
    for f in fields:
        assert f.metadata["help"].strip(), f.name
        assert f.name in by_dest and by_dest[f.name].help, f.name
        required = f.name in ("inputs", "out")
        assert (f.default is dataclasses.MISSING) == required, f.name
        if not required:
            assert flag_of(f) in by_dest[f.name].option_strings
    args = parser.parse_args(["segment", "a.tif", "b.tif", "--out", "o.zarr", "--bands", "3,2,1", "--quiet"])
    opts = from_args(SegmentOptions, args)
    assert opts == SegmentOptions(inputs=("a.tif", "b.tif"), out="o.zarr", bands=(3, 2, 1), progress=False)
    defaults = from_args(SegmentOptions, parser.parse_args(["segment", "a.tif", "--out", "o.zarr"]))
    assert defaults == SegmentOptions(inputs=("a.tif",), out="o.zarr")  # the CLI's defaults are the dataclass's


def test_the_ray_job_entrypoint_has_the_same_options_as_the_cli():
    def help_of(*cmd: str) -> str:
        return subprocess.run([sys.executable, *cmd, "--help"], capture_output=True, text=True, check=True).stdout

    job = help_of(str(REPO / "jobs" / "segment.py"))
    cli = help_of("-m", "tileseg.cli", "segment")
    flags = set(re.findall(r"--[a-z][a-z-]+", cli))
    assert {"--tile", "--overlap", "--quiet", "--stall-timeout", "--gpus-per-actor"} <= flags
    assert set(re.findall(r"--[a-z][a-z-]+", job)) == flags
    assert job == cli


def test_work_item_round_trips_through_its_row():
    (block,) = plan_blocks(300, 400, tile=64, overlap=16, block=None, chunk=100)
    item = WorkItem(image=3, path="/data/a.tif", group="a", block=block, tiles_run=5, error="", read_s=0.5)
    row = item.to_row()
    assert set(row) == set(ROW_KEYS)
    again = WorkItem.from_row(row)
    assert again == item and again.pixels is None and again.valid is None
    pixels = np.ones((block.read.height, block.read.width, 3), np.uint16)
    valid = np.zeros(pixels.shape[:2], bool)
    full = WorkItem.from_row(item.but(pixels=pixels, valid=valid).to_row())
    assert full.pixels is pixels and full.valid is valid and full.block == block


def test_no_module_but_work_py_names_a_row_column():
    """The row's column names are spelled in tileseg/segment/work.py only: everything else uses WorkItem."""
    work = REPO / "tileseg" / "segment" / "work.py"
    literals = [re.compile(rf"""(["']){re.escape(key)}\1""") for key in ROW_KEYS]
    assert all(p.search(work.read_text()) for p in literals)  # the pattern finds the literals where they are
    offenders = [
        f"{path.relative_to(REPO)}: {p.pattern}"
        for path in sorted((REPO / "tileseg").rglob("*.py"))
        if path != work
        for p in literals
        if p.search(path.read_text())
    ]
    assert not offenders, offenders


def _artifact_with(src: Path, dst: Path, change: dict) -> Path:
    """A copy of the artifact `src` whose tileseg metadata has `change` applied (None removes a key)."""
    import json
    import zipfile

    from tileseg.artifact import METADATA_ENTRY

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == METADATA_ENTRY:
                meta = {**json.loads(data), **change}
                data = json.dumps({k: v for k, v in meta.items() if v is not None}).encode()
            zout.writestr(name, data)
    return dst


BAD_ARTIFACTS = [  # (change to the tiny model's metadata, what the one line says)
    ({"tile": None}, "lacks tile"),
    ({"tile": "256"}, "'tile' must be an integer"),
    ({"mean": [110.0, "NaN", 95.0]}, "'mean' must hold finite numbers"),
]


@pytest.mark.parametrize(("change", "says"), BAD_ARTIFACTS, ids=["missing-key", "wrong-type", "nan-mean"])
def test_a_bad_artifact_is_one_line_exit_2_and_nothing_written(change, says, tiny_model_path, tmp_path, capsys):
    bad = _artifact_with(tiny_model_path, tmp_path / "bad.keras", change)
    out = tmp_path / "out.zarr"
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(out), "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and says in err, err
    assert not out.exists()


def test_a_lambda_layer_is_refused_before_anything_is_written(tmp_path, capsys):
    import keras

    from tileseg.model import default_metadata, save_model

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(2, 1, activation="softmax")(keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    model = keras.Model(inputs, outputs)
    evil = save_model(model, tmp_path / "evil.keras", default_metadata(model))
    out = tmp_path / "out.zarr"
    assert main(["segment", str(tmp_path / "in.tif"), "--out", str(out), "--model", str(evil)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil.keras: refused to load" in err and "Lambda" in err, err
    assert not out.exists()
