"""The `tileseg` command itself, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys


def _tileseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tileseg.cli", *args], capture_output=True, text=True)


def test_info_prints_metadata_and_parameter_count(tiny_model_path):
    result = _tileseg("info", str(tiny_model_path))
    assert result.returncode == 0, result.stderr
    assert "attention_unet" in result.stdout
    assert "background, building" in result.stdout
    as_json = json.loads(_tileseg("info", str(tiny_model_path), "--json").stdout)
    assert as_json["params"] > 0 and as_json["tile"] == 256 and as_json["mean"] == [110.0, 105.0, 95.0]


def test_info_on_a_non_artifact_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.keras"
    bogus.write_text("not a zip")
    result = _tileseg("info", str(bogus))
    assert result.returncode == 2
    assert "bogus.keras" in result.stderr and "Traceback" not in result.stderr


def test_top_level_help_lists_the_commands():
    result = _tileseg("--help")
    assert result.returncode == 0
    for command in ("segment", "train", "evaluate", "export", "info"):
        assert command in result.stdout
