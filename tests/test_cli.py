"""The CLI: help everywhere, a version, and errors as one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import make_scene, scene_polygons
from sparsecover import __version__
from sparsecover.cli import cli

COMMANDS = ["stack", "export", "info", "demo", "train", "lr-find", "classify", "suggest", "vectorize", "package", "export-onnx", "check", "evaluate", "report"]


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
        sub = runner.invoke(cli, [command, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_help_and_light_commands_do_not_load_pytorch():
    """`sparsecover --help`, `stack`, `check` and `info` answer at once: PyTorch is imported where a
    network is built or trained (importing it took ~5 s before any output)."""
    code = ("import sys, sparsecover, sparsecover.cli, sparsecover.stack, sparsecover.chips, sparsecover.predict, "
            "sparsecover.package, sparsecover.polygonize; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from sparsecover import classify_pixels, UnetClassifier, SparsecoverError, __all__; "
            "assert all(hasattr(sparsecover, n) for n in __all__) and 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_export_then_info(tmp_path):
    raster = make_scene(tmp_path)
    labels = tmp_path / "l.gpkg"
    scene_polygons().iloc[:4].to_file(labels)
    runner = CliRunner()
    out = tmp_path / "chips"
    result = runner.invoke(cli, ["export", str(raster), "--labels", str(labels), "--class-field", "classvalue",
                                 "--class-name-field", "classname", "--out", str(out), "--tile-size", "32",
                                 "--stride", "16", "-q", "--class-colors", "2=#00aa00"])
    assert result.exit_code == 0, result.output
    assert "chips of 32 px" in result.output and "classes" not in result.output  # -q: a summary, no tables
    result = runner.invoke(cli, ["info", str(out)])
    assert result.exit_code == 0
    for text in ("water", "forest", "developed", "#00aa00", "blue", "nir", "spatial groups"):
        assert text in result.output


def test_error_is_one_line_without_traceback(tmp_path):
    raster = make_scene(tmp_path)
    labels = tmp_path / "l.gpkg"
    scene_polygons().to_file(labels)
    proc = subprocess.run(
        [sys.executable, "-m", "sparsecover.cli", "export", str(raster), "--labels", str(labels),
         "--class-field", "nope", "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "l.gpkg" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [["info", "/nonexistent"], ["stack", "/nonexistent.tif", "-o", "x.vrt"]])
def test_other_errors_exit_2(args, tmp_path):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2


@pytest.mark.slow
def test_demo_runs_on_the_shipped_scene(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "-q", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    for artifact in ("chips/dataset.json", "run/model.sparsecover", "run/lr_find.png", "landcover.tif", "landcover.qml",
                     "landcover.gpkg",
                     "evaluation/metrics.json", "evaluation_points/metrics.json", "validation/confusion_matrix.png",
                     "report.html"):
        assert (tmp_path / "demo" / artifact).exists(), artifact
    assert "overall accuracy" in result.output and "land-cover map" in result.output
