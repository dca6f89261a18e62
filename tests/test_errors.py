"""Bad input, command by command, as a table: every case exits with status 2 and one line that says
what is wrong (naming the file where a file is at fault), with no traceback, and leaves nothing behind,
neither in the output folder nor beside the inputs.

One trained model serves every case (the shared ``trained_model`` fixture); no case trains.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from shapely.geometry import box

from conftest import ORIGIN, write_raster
from sparsecover.cli import cli

USAGE = "Usage"  # click's own refusal of an option's type or range: its usage text, then "Error: ..."

CASES = [
    # stack
    ("stack-missing", "stack {missing_tif} -o {out}/s.vrt", "missing.tif: file not found"),
    ("stack-junk", "stack {junk} -o {out}/s.vrt", "junk.tif: not a raster GDAL can read"),
    ("stack-no-crs", "stack {nocrs} -o {out}/s.vrt", "nocrs.tif: raster has no CRS"),
    ("stack-out-exists", "stack {scene} -o {existing_file}", "exists.txt"),
    ("stack-out-parent", "stack {scene} -o {out}/nowhere/s.vrt", "nowhere"),
    ("stack-band-names", "stack {scene} -o {out}/s.vrt --band-names a,b", "--band-names lists 2 names but the inputs hold 4"),
    ("stack-resample", "stack {scene} {classmap} -o {out}/s.vrt --resample wobbly", "wobbly"),
    # export
    ("export-raster-missing", "export {missing_tif} --labels {polygons} --class-field classvalue --out {out}/c",
     "missing.tif"),
    ("export-raster-junk", "export {junk} --labels {polygons} --class-field classvalue --out {out}/c", "junk.tif"),
    ("export-raster-truncated", "export {truncated} --labels {polygons} --class-field classvalue --out {out}/c",
     "truncated.tif"),
    ("export-raster-no-crs", "export {nocrs} --labels {polygons} --class-field classvalue --out {out}/c",
     "nocrs.tif: raster has no CRS"),
    ("export-labels-missing", "export {scene} --labels {missing_gpkg} --class-field classvalue --out {out}/c",
     "missing.gpkg: label file not found"),
    ("export-labels-no-crs", "export {scene} --labels {nocrs_shp} --class-field classvalue --out {out}/c",
     "nocrs.shp: the label file has no CRS"),
    ("export-labels-broken", "export {scene} --labels {broken_gpkg} --class-field classvalue --out {out}/c",
     "broken.gpkg: cannot read the label file"),
    ("export-labels-empty", "export {scene} --labels {empty_gpkg} --class-field classvalue --out {out}/c",
     "empty.gpkg: label file holds no features"),
    ("export-labels-far", "export {scene} --labels {faraway_gpkg} --class-field classvalue --out {out}/c",
     "faraway.gpkg: no polygon overlaps"),
    ("export-labels-text", "export {scene} --labels {text_gpkg} --class-field classvalue --out {out}/c",
     "text.gpkg: field 'classvalue' must hold integer class values"),
    ("export-shp-without-dbf", "export {scene} --labels {nodbf_shp} --class-field classvalue --out {out}/c",
     "nodbf.shp: its attribute table nodbf.dbf is missing"),
    ("export-raster-all-nan", "export {nan} --labels {polygons} --class-field classvalue --out {out}/c",
     "nan.tif: no pixel has every band valid"),
    ("export-labels-zero", "export {scene} --labels {zero_gpkg} --class-field classvalue --out {out}/c",
     "zero.gpkg: class value 0"),
    ("export-no-class-field", "export {scene} --labels {polygons} --out {out}/c", "polygons.gpkg: pass --class-field"),
    ("export-wrong-class-field", "export {scene} --labels {polygons} --class-field nope --out {out}/c",
     "polygons.gpkg: no field 'nope'"),
    ("export-label-raster-fraction", "export {scene} --labels {fractional} --out {out}/c",
     "fractional.tif: label value 1.5 is not an integer class value"),
    ("export-label-raster-bands", "export {scene} --labels {twoband} --out {out}/c",
     "twoband.tif: a label raster must have one band"),
    ("export-two-label-rasters", "export {scene} --labels {classmap} --labels {classmap} --out {out}/c",
     "only vector files can be combined"),
    ("export-tile-size", "export {scene} --labels {polygons} --class-field classvalue --out {out}/c --tile-size 4",
     "tile size must be >= 8"),
    ("export-stride", "export {scene} --labels {polygons} --class-field classvalue --out {out}/c --stride 0",
     "stride >= 1"),
    ("export-huge-tile", "export {scene} --labels {polygons} --class-field classvalue --out {out}/c "
     "--tile-size 100000", "--tile-size 100000"),
    ("export-out-exists", "export {scene} --labels {polygons} --class-field classvalue --out {existing_dir}",
     "existing: already exists"),
    ("export-out-parent", "export {scene} --labels {polygons} --class-field classvalue --out {out}/nowhere/c",
     "nowhere: output folder does not exist"),
    ("export-class-colors", "export {scene} --labels {polygons} --class-field classvalue --out {out}/c "
     "--class-colors 1=notacolour", "notacolour"),
    ("export-class-names", "export {scene} --labels {polygons} --class-field classvalue --out {out}/c "
     "--class-names water", "water"),
    # info
    ("info-missing", "info {missing_tif}", "missing.tif"),
    ("info-junk", "info {junk}", "junk.tif: not a raster GDAL can read"),
    # train
    ("train-chips-missing", "train {missing_dir} --out {out}/r", "missing"),
    ("train-not-chips", "train {existing_dir} --out {out}/r", "existing"),
    ("train-batch-size", "train {chips} --out {out}/r --batch-size 0", "--batch-size"),
    ("train-epochs", "train {chips} --out {out}/r --epochs 0", "--epochs must be at least 1"),
    ("train-lr-text", "train {chips} --out {out}/r --lr abc", "--lr must be auto or a number"),
    ("train-lr-negative", "train {chips} --out {out}/r --lr -1", "--lr"),
    ("train-backbone", "train {chips} --out {out}/r --backbone resnet9000", "unknown backbone 'resnet9000'"),
    ("train-architecture", "train {chips} --out {out}/r --architecture wobbly", "unknown architecture 'wobbly'"),
    ("train-encoder-depth", "train {chips} --out {out}/r --encoder-depth 7", USAGE),
    ("train-val-fraction", "train {chips} --out {out}/r --val-fraction 1.5", "--val-fraction"),
    ("train-out-file", "train {chips} --out {existing_file}", "exists.txt: is a file"),
    ("train-out-used", "train {chips} --out {existing_dir}", "run folder exists and is not empty"),
    ("train-resume-nothing", "train {chips} --out {out}/r --resume", "nothing to resume"),
    ("train-weights-missing", "train {chips} --out {out}/r --weights {missing_pt}", "missing.pt"),
    ("train-members", "train {chips} --out {out}/r --members 0", USAGE),
    ("train-bands", "train {chips} --out {out}/r --bands red,swir9", "swir9"),
    ("lr-find-batch-size", "lr-find {chips} --out {out}/lr.png --batch-size 0", "--batch-size"),
    # classify
    ("classify-model-missing", "classify {scene} {missing_pkg} --out {out}/m.tif", "missing.sparsecover"),
    ("classify-raster-missing", "classify {missing_tif} {model} --out {out}/m.tif", "missing.tif"),
    ("classify-swapped", "classify {model} {scene} --out {out}/m.tif",
     "scene.tif: is a raster, not a model package; the model comes after the raster(s)"),
    ("classify-model-junk", "classify {scene} {junk} --out {out}/m.tif", "junk.tif: not a model package"),
    ("classify-bands", "classify {threeband} {model} --out {out}/m.tif", "threeband.tif"),
    ("classify-batch-size-0", "classify {scene} {model} --out {out}/m.tif --batch-size 0", "--batch-size"),
    ("classify-batch-size-neg", "classify {scene} {model} --out {out}/m.tif --batch-size -1", "--batch-size"),
    ("classify-tile-size", "classify {scene} {model} --out {out}/m.tif --tile-size 0", "--tile-size"),
    ("classify-padding", "classify {scene} {model} --out {out}/m.tif --padding -1", "--padding must be 0 or more"),
    ("classify-out-exists", "classify {scene} {model} --out {existing_file}", "exists.txt: already exists"),
    ("classify-out-dir", "classify {scene} {model} --out {existing_dir}", "existing: already exists"),
    ("classify-out-parent", "classify {scene} {model} --out {out}/nowhere/m.tif", "nowhere"),
    ("classify-all-nodata", "classify {allnodata} {model} --out {out}/m.tif", "allnodata.tif"),
    ("classify-truncated-model", "classify {scene} {truncated_pkg} --out {out}/m.tif",
     "truncated.sparsecover: not a readable model package"),
    ("classify-aoi-broken", "classify {scene} {model} --out {out}/m.tif --aoi {broken_gpkg}",
     "broken.gpkg: cannot read the AOI"),
    ("classify-aoi-no-crs", "classify {scene} {model} --out {out}/m.tif --aoi {nocrs_shp}", "nocrs.shp: the AOI has no CRS"),
    ("classify-aoi-far", "classify {scene} {model} --out {out}/m.tif --aoi {faraway_gpkg}",
     "faraway.gpkg: the AOI lies outside scene.tif"),
    ("classify-min-area", "classify {scene} {model} --out {out}/m.tif --vector {out}/m.gpkg "
     "--min-area 3acres", "3acres"),
    ("classify-resume-nothing", "classify {scene} {model} --out {existing_file} --resume", "exists.txt"),
    # suggest
    ("suggest-n", "suggest {scene} {model} --out {out}/s.gpkg --n 0", "--n must be at least 1"),
    ("suggest-size", "suggest {scene} {model} --out {out}/s.gpkg --size 0", "--size"),
    ("suggest-labels-no-crs", "suggest {scene} {model} --out {out}/s.gpkg --labels {nocrs_shp}",
     "nocrs.shp: the label file has no CRS"),
    ("suggest-out-exists", "suggest {scene} {model} --out {existing_gpkg}", "exists.gpkg: already exists"),
    ("suggest-out-not-gpkg", "suggest {scene} {model} --out {existing_file}", "name the output *.gpkg"),
    ("suggest-bands", "suggest {threeband} {model} --out {out}/s.gpkg", "threeband.tif"),
    # vectorize
    ("vectorize-missing", "vectorize {missing_tif} --out {out}/v.gpkg", "missing.tif"),
    ("vectorize-image", "vectorize {image6} --out {out}/v.gpkg", "image6.tif: not a class map"),
    ("vectorize-min-area", "vectorize {classmap} --out {out}/v.gpkg --min-area 3acres", "3acres"),
    ("vectorize-classes", "vectorize {classmap} --out {out}/v.gpkg --classes 42", "--classes 42 not in the map"),
    ("vectorize-out-exists", "vectorize {classmap} --out {existing_file}", "exists.txt"),
    # evaluate
    ("evaluate-map-missing", "evaluate {missing_tif} --reference {classmap} --out {out}/e", "missing.tif"),
    ("evaluate-map-image", "evaluate {image6} --reference {classmap} --out {out}/e", "image6.tif: not a class map"),
    ("evaluate-reference-missing", "evaluate {classmap} --reference {missing_gpkg} --class-field classvalue "
     "--out {out}/e", "missing.gpkg: reference not found"),
    ("evaluate-reference-no-crs", "evaluate {classmap} --reference {nocrs_shp} --class-field classvalue "
     "--out {out}/e", "nocrs.shp: the reference has no CRS"),
    ("evaluate-reference-field", "evaluate {classmap} --reference {polygons} --out {out}/e",
     "polygons.gpkg: pass --class-field"),
    ("evaluate-reference-fraction", "evaluate {classmap} --reference {fractional} --out {out}/e",
     "fractional.tif: label value 1.5"),
    ("evaluate-reference-bands", "evaluate {classmap} --reference {twoband} --out {out}/e",
     "twoband.tif: a label raster must have one band"),
    ("evaluate-exclude-missing", "evaluate {classmap} --reference {classmap} --exclude {missing_gpkg} --out {out}/e",
     "missing.gpkg: exclusion polygons not found"),
    ("evaluate-exclude-broken", "evaluate {classmap} --reference {classmap} --exclude {broken_gpkg} --out {out}/e",
     "broken.gpkg: cannot read the exclusion polygons"),
    ("evaluate-reference-far", "evaluate {classmap} --reference {faraway_gpkg} --class-field classvalue "
     "--out {out}/e", "faraway.gpkg: no polygon overlaps"),
    # package, check, export-onnx, report
    ("package-missing", "package {missing_dir} -o {out}/p.sparsecover", "missing"),
    ("package-out-exists", "package {model} -o {existing_pkg}", "exists.sparsecover"),
    ("check-truncated", "check {scene} {truncated_pkg}", "truncated.sparsecover"),
    ("check-bands", "check {threeband} {model}", "threeband.tif"),
    ("export-onnx-truncated", "export-onnx {truncated_pkg} -o {out}/m.onnx", "truncated.sparsecover"),
    ("report-not-a-run", "report {chips} --out {out}/r.html", "not a training run folder"),
]


UNWRITABLE = "/sys/sparsecover"  # sysfs: no one, root included, may create files there
CANNOT_WRITE = "/sys: cannot write there"
if Path("/sys/kernel").is_dir():
    CASES += [
        ("stack-unwritable", f"stack {{scene}} -o {UNWRITABLE}.vrt", CANNOT_WRITE),
        ("export-unwritable", f"export {{scene}} --labels {{polygons}} --class-field classvalue --out {UNWRITABLE}",
         CANNOT_WRITE),
        ("train-unwritable", f"train {{chips}} --out {UNWRITABLE}", CANNOT_WRITE),
        ("classify-unwritable", f"classify {{scene}} {{model}} --out {UNWRITABLE}.tif", CANNOT_WRITE),
        ("vectorize-unwritable", f"vectorize {{classmap}} --out {UNWRITABLE}.gpkg", CANNOT_WRITE),
        ("evaluate-unwritable", f"evaluate {{classmap}} --reference {{classmap}} --out {UNWRITABLE}", CANNOT_WRITE),
        ("suggest-unwritable", f"suggest {{scene}} {{model}} --out {UNWRITABLE}.gpkg", CANNOT_WRITE),
        ("package-unwritable", f"package {{model}} -o {UNWRITABLE}.sparsecover", CANNOT_WRITE),
        ("export-onnx-unwritable", f"export-onnx {{model}} -o {UNWRITABLE}.onnx", CANNOT_WRITE),
        ("lr-find-unwritable", f"lr-find {{chips}} --out {UNWRITABLE}.png", CANNOT_WRITE),
    ]


@pytest.fixture(scope="module")
def inputs(train_chips, trained_model, tmp_path_factory) -> dict[str, str]:
    """Every bad (and good) input the table refers to, in one folder no case may change."""
    folder = tmp_path_factory.mktemp("inputs")
    scene_src = train_chips.parent / "classes_scene.tif"
    scene = folder / "scene.tif"
    shutil.copy(scene_src, scene)
    with rasterio.open(scene) as src:
        data = src.read()
    polygons = gpd.read_file(train_chips.parent / "polygons.gpkg")
    polygons.to_file(folder / "polygons.gpkg")
    shutil.copy(trained_model / "model.sparsecover", folder / "model.sparsecover")
    package = (folder / "model.sparsecover").read_bytes()
    (folder / "truncated.sparsecover").write_bytes(package[: len(package) // 2])
    (folder / "junk.tif").write_text("not a raster")
    (folder / "truncated.tif").write_bytes(scene.read_bytes()[: scene.stat().st_size // 3])
    write_raster(folder / "nocrs.tif", data, nodata=0, crs=None)
    write_raster(folder / "threeband.tif", data[:3], nodata=0)
    write_raster(folder / "allnodata.tif", np.zeros_like(data), nodata=0)
    rng = np.random.default_rng(0)
    write_raster(folder / "image6.tif", rng.random((6, *data.shape[1:])).astype("float32"))
    classes = rng.integers(1, 4, data.shape[1:]).astype("uint8")
    write_raster(folder / "classmap.tif", classes, nodata=0)
    write_raster(folder / "fractional.tif", np.where(classes == 2, 1.5, classes).astype("float32"))
    write_raster(folder / "twoband.tif", np.stack([classes, classes]))
    no_crs = polygons.set_crs(None, allow_override=True)
    no_crs.to_file(folder / "nocrs.shp")
    (folder / "nocrs.prj").unlink(missing_ok=True)
    (folder / "broken.gpkg").write_text("not a geopackage")
    polygons.to_file(folder / "nodbf.shp")
    (folder / "nodbf.dbf").unlink()
    write_raster(folder / "nan.tif", np.full(data.shape, np.nan, "float32"))
    polygons.iloc[:0].to_file(folder / "empty.gpkg")
    x0, y0 = ORIGIN
    far = gpd.GeoDataFrame({"classvalue": [1]}, geometry=[box(x0 + 1e6, y0, x0 + 1e6 + 100, y0 + 100)], crs=polygons.crs)
    far.to_file(folder / "faraway.gpkg")
    text = polygons.copy()
    text["classvalue"] = "water"
    text.to_file(folder / "text.gpkg")
    zero = polygons.copy()
    zero["classvalue"] = 0
    zero.to_file(folder / "zero.gpkg")
    (folder / "exists.txt").write_text("an existing output")
    (folder / "exists.gpkg").write_text("an existing output")
    (folder / "exists.sparsecover").write_text("an existing output")
    (folder / "existing").mkdir()
    (folder / "existing" / "something.txt").write_text("a used folder")
    paths = {
        "scene": scene, "polygons": folder / "polygons.gpkg", "chips": train_chips, "model": folder / "model.sparsecover",
        "truncated_pkg": folder / "truncated.sparsecover", "junk": folder / "junk.tif",
        "truncated": folder / "truncated.tif", "nocrs": folder / "nocrs.tif", "threeband": folder / "threeband.tif",
        "allnodata": folder / "allnodata.tif", "image6": folder / "image6.tif", "classmap": folder / "classmap.tif",
        "fractional": folder / "fractional.tif", "twoband": folder / "twoband.tif", "nocrs_shp": folder / "nocrs.shp",
        "broken_gpkg": folder / "broken.gpkg", "nodbf_shp": folder / "nodbf.shp", "nan": folder / "nan.tif", "empty_gpkg": folder / "empty.gpkg",
        "faraway_gpkg": folder / "faraway.gpkg", "text_gpkg": folder / "text.gpkg", "zero_gpkg": folder / "zero.gpkg",
        "existing_file": folder / "exists.txt", "existing_dir": folder / "existing",
        "existing_gpkg": folder / "exists.gpkg", "existing_pkg": folder / "exists.sparsecover",
        "missing_tif": folder / "missing.tif", "missing_gpkg": folder / "missing.gpkg",
        "missing_pkg": folder / "missing.sparsecover", "missing_pt": folder / "missing.pt",
        "missing_dir": folder / "missing",
    }
    return {k: str(v) for k, v in paths.items()}


def _listing(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_the_table_covers_every_command_with_enough_cases():
    from test_cli import COMMANDS

    assert len(CASES) >= 60
    covered = {args.split()[0] for _, args, _ in CASES}
    assert covered >= set(COMMANDS) - {"demo"}, set(COMMANDS) - covered


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(args, expected, inputs, train_chips, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    watched = [out, Path(inputs["scene"]).parent, train_chips]
    before = [_listing(folder) for folder in watched]
    argv = [part.format(**inputs, out=out) for part in args.split()]
    result = CliRunner().invoke(cli, argv)
    shown = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {shown}{result.exception!r}"
    assert "Traceback" not in shown, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if expected == USAGE:
        assert lines[0].startswith("Usage:") and lines[-1].startswith("Error:"), shown
    else:  # a progress bar may have drawn before the input was found bad; the error is one line, the last
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], shown
        assert expected in errors[0], shown
    after = [_listing(folder) for folder in watched]
    for folder, old, new in zip(watched, before, after):
        assert new == old, f"left in {folder}: {sorted(new - old)}"


FULL_DISK = [  # outputs of more than a few KB, written after the inputs were found good
    ("stack-cog", "stack {scene} {scene} {scene} {scene} -o {out}/s.tif --cog"),
    ("export-onnx", "export-onnx {model} -o {out}/m.onnx"),
    ("package", "package {model} -o {out}/p.sparsecover"),
    ("evaluate", "evaluate {classmap} --reference {classmap} --out {out}/e"),
    ("vectorize", "vectorize {classmap} --out {out}/v.gpkg"),
    ("classify", "classify {scene} {model} --out {out}/m.tif --probabilities {out}/p.tif"),
]


@pytest.mark.parametrize("args", [c[1] for c in FULL_DISK], ids=[c[0] for c in FULL_DISK])
def test_a_full_disk_is_one_line_and_leaves_nothing(args, inputs, tmp_path):
    """Writes that fail part-way (a file-size limit fails them as a full disk does): one line, exit 2,
    no file left that looks finished."""
    import subprocess
    import sys

    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4_000, 4_000));"
            "from sparsecover.cli import main; sys.argv = ['sparsecover'] + sys.argv[1:]; main()")
    out = tmp_path / "out"
    out.mkdir()
    argv = [part.format(**inputs, out=out) for part in args.split()]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("_tiff", "warning"))]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith("error:") and [line for line in lines if line.startswith("error:")] == lines[-1:], \
        done.stderr
    left = sorted(p.name for p in out.iterdir())
    if argv[0] == "classify":  # its hidden partial files stay for --resume once there is space again
        left = [name for name in left if not name.startswith(".")]
    assert left == [], done.stderr


def test_classify_and_suggest_refuse_a_bad_raster_before_pytorch_loads(inputs, tmp_path):
    """Seconds of importing PyTorch on 2 cores are not spent before saying the raster is unreadable."""
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from sparsecover.cli import cli;"
            "result = CliRunner().invoke(cli, sys.argv[1:]);"
            "assert result.exit_code == 2 and 'junk.tif' in result.stderr, result.output;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    for command in ("classify {junk} {model} --out {out}/m.tif", "suggest {junk} {model} --out {out}/s.gpkg"):
        argv = [part.format(**inputs, out=tmp_path) for part in command.split()]
        subprocess.run([sys.executable, "-c", code, *argv], check=True)
