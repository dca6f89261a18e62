"""vectorize: class map -> polygons without block seams, sieved and simplified as map makers do, styled for QGIS."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from rasterio import features
from rasterio.crs import CRS
from scipy import ndimage

from conftest import write_raster
from sparsecover import SparsecoverError, vectorize
from sparsecover.classes import build_class_table
from sparsecover.cli import cli


def class_map(tmp_path, nodata_corner=True, name="map.tif", **kw):
    """Smooth random patches of 4 classes with a nodata corner, many patches crossing any strip seam."""
    rng = np.random.default_rng(3)
    data = ndimage.median_filter(rng.integers(1, 5, (120, 97)).astype(np.uint8), 5)
    if nodata_corner:
        data[:9, :13] = 0
    path = write_raster(tmp_path / name, data, nodata=0, **kw)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {c.value: (*c.rgb, 255) for c in build_class_table([1, 2, 3, 4])})
    return path, data


def read(path):
    return gpd.read_file(path, layer=path.stem, engine="pyogrio")


def same_polygons(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> bool:
    key = lambda f: sorted(zip(f.class_value, f.pixels, f.geometry.representative_point().x.round(6),  # noqa: E731
                               f.geometry.representative_point().y.round(6), f.geometry))
    return len(a) == len(b) and all(va == vb and pa == pb and ga.equals(gb)
                                    for (va, pa, _, _, ga), (vb, pb, _, _, gb) in zip(key(a), key(b)))


def rasterized(frame, like):
    with rasterio.open(like) as src:
        return features.rasterize(zip(frame.geometry, frame.class_value), out_shape=src.shape, transform=src.transform)


def test_polygons_cover_each_class_exactly_and_do_not_depend_on_the_blocks(tmp_path):
    path, data = class_map(tmp_path)
    whole = read(vectorize(path, tmp_path / "whole.gpkg", progress=False))
    for rows in (1, 7, 50):  # block sides
        assert same_polygons(whole, read(vectorize(path, tmp_path / f"blocks{rows}.gpkg", progress=False,
                                                   block_size=rows)))
    assert whole.crs == CRS.from_epsg(32618) and shapely.is_valid(whole.geometry.values).all()
    assert set(whole.geom_type) == {"Polygon"}
    for value in (1, 2, 3, 4):  # area = pixels x pixel area, exactly up to rounding; no polygon on nodata
        mine = whole[whole.class_value == value]
        assert mine.area_ha.sum() == pytest.approx((data == value).sum() * 100 / 1e4, rel=1e-12)
        assert mine.pixels.sum() == (data == value).sum()
    assert np.array_equal(rasterized(whole, path), data)  # the polygons give back the map, nodata included
    assert (whole.perimeter_m > 0).all() and set(whole.class_name) == {"class_1", "class_2", "class_3", "class_4"}
    # a patch is one polygon: 4-connected components of the map, counted by scipy
    assert len(whole) == sum(ndimage.label(data == v)[1] for v in (1, 2, 3, 4))


def test_layer_opens_styled_in_qgis(tmp_path):
    path, _ = class_map(tmp_path)
    out = vectorize(path, tmp_path / "styled.gpkg", classes=[2, 4], layer="landcover", progress=False)
    assert {name for name, _ in pyogrio.list_layers(out)} == {"landcover", "layer_styles"}
    assert set(gpd.read_file(out, layer="landcover").class_value) == {2, 4}
    style = pyogrio.read_dataframe(out, layer="layer_styles")
    assert list(style.f_table_name) == ["landcover"] and list(style.useAsDefault) == [True]
    renderer = ET.fromstring(style.styleQML[0].split("\n", 1)[1]).find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class_value"
    table = {c.value: c for c in build_class_table([1, 2, 3, 4])}
    categories = renderer.findall("categories/category")
    assert [(c.get("value"), c.get("label")) for c in categories] == [("2", "class_2"), ("4", "class_4")]
    colours = [s.find("layer/Option/Option[@name='color']").get("value") for s in renderer.findall("symbols/symbol")]
    assert colours == [",".join(map(str, (*table[v].rgb, 255))) for v in (2, 4)]


def test_min_area_sieves_before_polygonising_close_to_gdal(tmp_path):
    path, data = class_map(tmp_path, nodata_corner=False)
    sieved = read(vectorize(path, tmp_path / "sieved.gpkg", min_area="30px", progress=False))
    assert sieved.pixels.min() >= 30
    assert same_polygons(sieved, read(vectorize(path, tmp_path / "s.gpkg", min_area="30px", block_size=4,
                                                progress=False)))
    mine = rasterized(sieved, path)
    gdal = features.sieve(data, 30, connectivity=4)
    # GDAL joins the largest neighbour, sparsecover the longest border: they differ only where a small
    # patch has several neighbours at the unit
    assert (mine == gdal).mean() > 0.99
    assert (mine != data).any()
    # hectares: 10 m pixels, 0.3 ha = 30 px
    in_ha = read(vectorize(path, tmp_path / "ha.gpkg", min_area="0.3ha", progress=False))
    assert same_polygons(sieved, in_ha)


def test_a_small_patch_joins_the_neighbour_it_shares_the_longest_border_with(tmp_path):
    data = np.ones((20, 20), np.uint8)
    data[:, 12:] = 2  # class 2: the smaller neighbour
    data[5:7, 11:14] = 3  # 2x3, 4 edges with class 1 and 6 with class 2: it joins class 2 (ArcGIS Eliminate's LENGTH)
    data[12:15, 2:5] = 4  # 3x3: at the unit, stays
    data[2, 1:6], data[3, [1, 5]] = 6, 6  # 7 px around the top of a 3 px patch: both small
    data[3, 2:5] = 5  # 5 edges with class 6, 3 with class 1: a neighbour at the unit comes first
    data[14:, 14:] = 0  # nodata, with an island of 2 + 3 px in it: the smaller joins the larger, then it stays
    data[16, 16:18], data[17, 16:19] = 3, 4
    path = write_raster(tmp_path / "m.tif", data, nodata=0)
    results = [read(vectorize(path, tmp_path / f"m{size}.gpkg", min_area="8px", block_size=size, progress=False))
               for size in (512, 1, 3)]
    assert sorted(zip(results[0].class_value, results[0].pixels)) == [(1, 229), (2, 126), (4, 5), (4, 9)]
    assert all(same_polygons(results[0], other) for other in results[1:])


def test_the_sieve_decides_patches_as_the_rows_pass(tmp_path, monkeypatch):
    """Memory follows the map's width: what is still undecided after each row of blocks stays a small
    part of a tall speckled map's patches, and the changes wait for their blocks' reads a few rows
    at most."""
    from sparsecover import sieve

    rng = np.random.default_rng(0)
    data = ndimage.median_filter(rng.integers(1, 4, (1200, 60)).astype(np.uint8), 3)
    path = write_raster(tmp_path / "tall.tif", data, nodata=0)
    pending, waiting = [], []

    def counted(*args):
        kept = settle(*args)
        pending.append(sum(len(i) for i in kept.ids))
        waiting.append(len(args[-1].by_block))  # blocks whose changes are not read yet
        return kept

    settle = sieve.settle
    monkeypatch.setattr(sieve, "settle", counted)
    frame = read(vectorize(path, tmp_path / "tall.gpkg", min_area="20px", block_size=30, progress=False))
    patches = sum(ndimage.label(data == v)[1] for v in (1, 2, 3))
    assert len(pending) == 40 and pending[-1] == 0
    assert max(pending) < patches / 10, (max(pending), patches)
    assert max(waiting) <= 3 * 2  # rows of two blocks
    assert frame.pixels.min() >= 20 and frame.pixels.sum() == data.size


def test_the_sieve_does_not_depend_on_the_blocks_and_leaves_small_patches_only_in_nodata():
    """Random maps (speckle and smoothed, with nodata), random units and block sizes: the sieved map is
    the same whatever the blocks, nodata stays nodata, and a patch still under the unit has no
    neighbour of another class (an island in nodata)."""
    from sparsecover.mapblocks import map_blocks
    from sparsecover.sieve import Sieve

    def sieved(data, size, threshold):
        h, w = data.shape
        blocks = map_blocks(h, w, size, (size, size))
        out = np.zeros_like(data)
        sieve = Sieve(lambda win: (data[win.toslices()], data[win.toslices()] > 0), blocks, threshold, w, h)
        for win in blocks:
            values, valid = sieve(win)
            out[win.toslices()] = np.where(valid, values, 0)
        return out

    rng = np.random.default_rng(1)
    for case in range(40):
        data = rng.integers(0, rng.integers(2, 6), rng.integers(5, 50, 2)).astype(np.uint8)
        data = ndimage.median_filter(data, 3) if case % 2 else data
        threshold = int(rng.integers(2, 30))
        whole = sieved(data, 512, threshold)
        for size in (int(rng.integers(1, 6)), int(rng.integers(6, 30))):
            assert np.array_equal(sieved(data, size, threshold), whole), (case, size)
        assert np.array_equal(whole > 0, data > 0)
        for value in np.unique(whole[whole > 0]):
            patches, _ = ndimage.label(whole == value)
            for small in np.flatnonzero(np.bincount(patches.ravel())[1:] < threshold) + 1:
                around = ndimage.binary_dilation(patches == small) & (patches != small)
                assert not whole[around].any(), (case, value)


def test_simplify_keeps_a_coverage_without_gaps_or_overlaps(tmp_path):
    path, _ = class_map(tmp_path)
    plain = read(vectorize(path, tmp_path / "plain.gpkg", min_area="10px", progress=False))
    simple = read(vectorize(path, tmp_path / "simple.gpkg", min_area="10px", simplify=25.0, progress=False))
    assert len(simple) == len(plain) and shapely.is_valid(simple.geometry.values).all()
    assert shapely.coverage_is_valid(simple.geometry.values)  # no overlaps, shared edges identical
    assert shapely.get_num_coordinates(simple.geometry.values).sum() < shapely.get_num_coordinates(
        plain.geometry.values).sum()
    assert shapely.union_all(simple.geometry.values).area == pytest.approx(simple.geometry.area.sum(), rel=1e-9)


def test_geographic_crs_names_its_area_units(tmp_path):
    path, _ = class_map(tmp_path, crs=CRS.from_epsg(4326), res=0.0001, origin=(-78.0, 35.0))
    frame = read(vectorize(path, tmp_path / "deg.gpkg", progress=False))
    assert {"area_degree2", "perimeter_degree"} <= set(frame.columns)
    with pytest.raises(SparsecoverError, match="needs a CRS in metres"):
        vectorize(path, tmp_path / "x.gpkg", min_area="1ha", progress=False)


def test_bad_input_gets_one_line_and_no_output(tmp_path):
    path, data = class_map(tmp_path)
    image = write_raster(tmp_path / "image.tif", np.stack([data, data, data]).astype(np.uint16))
    band = write_raster(tmp_path / "band.tif", (data * 0.37).astype(np.float32))
    wide = write_raster(tmp_path / "wide.tif", np.arange(120 * 97, dtype=np.uint16).reshape(120, 97))
    negative = write_raster(tmp_path / "negative.tif", np.where(data > 0, data.astype(np.int16), -9999))
    cases = [
        ([str(image), "--out", "o.gpkg"], "not a class map (3 band"),
        ([str(band), "--out", "o.gpkg"], "not whole numbers"),
        ([str(wide), "--out", "o.gpkg"], "an image band?"),
        ([str(negative), "--out", "o.gpkg"], "value -9999 is not a class"),
        ([str(path), "--out", "o.shp"], "name the output *.gpkg"),
        ([str(path), "--out", "o.gpkg", "--classes", "2,9"], "--classes 9 not in the map"),
        ([str(path), "--out", "o.gpkg", "--classes", "two"], "give class values"),
        ([str(path), "--out", "o.gpkg", "--min-area", "12"], "with its unit"),
        ([str(path), "--out", "o.gpkg", "--simplify", "0"], "--simplify must be"),
        ([str(tmp_path / "missing.tif"), "--out", "o.gpkg"], "file not found"),
    ]
    work = tmp_path / "work"
    work.mkdir()
    runner = CliRunner()
    for args, message in cases:
        args = [str(work / a) if a.startswith("o.") else a for a in args]
        result = runner.invoke(cli, ["vectorize", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not list(work.iterdir())  # nothing left behind, partials included
    assert runner.invoke(cli, ["vectorize", str(path), "--out", str(work / "o.gpkg"), "-q"]).exit_code == 0
    again = runner.invoke(cli, ["vectorize", str(path), "--out", str(work / "o.gpkg"), "-q"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_a_full_disk_gives_one_line_and_leaves_nothing(tmp_path):
    """Writes that fail as on a full disk (a file-size limit) end in one line, no partial GeoPackage."""
    import subprocess
    import sys

    path, _ = class_map(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000));"
            "from sparsecover.cli import main; sys.argv = ['sparsecover'] + sys.argv[1:]; main()")
    done = subprocess.run([sys.executable, "-c", code, "vectorize", str(path), "--out", str(out / "v.gpkg"), "-q"],
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[-1].startswith("error:") and "is the disk full?" in lines[-1] and "v.gpkg" in lines[-1]
    assert list(out.iterdir()) == []


#: Opens a vector map and a class raster in QGIS, headless, as a user's double-click would: the
#: styles QGIS finds by itself (the GeoPackage's layer_styles, the .qml beside the raster).
QGIS_OPEN = """
import json, os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
vector, raster = QgsVectorLayer(sys.argv[1], "map", "ogr"), QgsRasterLayer(sys.argv[2], "map")
style, palette = vector.renderer(), raster.renderer()
print(json.dumps({
    "vector": [vector.isValid(), style.type(), getattr(style, "classAttribute", str)(),
               [[c.value(), c.label(), c.symbol().color().name()] for c in getattr(style, "categories", list)()]],
    "raster": [raster.isValid(), palette.type(),
               [[int(c.value), c.label, c.color.name()] for c in getattr(palette, "classes", list)()]]}), flush=True)
"""  # no app.exitQgis(): with the layers still alive it crashes on the way out


def _qgis_python() -> str | None:
    """Debian's Python with QGIS's bindings (package python3-qgis, which .ci/run installs), or None."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        return None
    found = subprocess.run([str(python), "-c", "import qgis.core"], capture_output=True, timeout=120)
    return str(python) if found.returncode == 0 else None


def test_qgis_opens_the_vector_and_raster_maps_in_the_class_colours_and_names(tmp_path):
    from sparsecover.styles import write_raster_style

    path, _ = class_map(tmp_path)
    plain = build_class_table([1, 2, 3, 4])  # the map's colour table (class_map)
    table = build_class_table([1, 2, 3, 4], {1: "water", 2: "forest", 3: "crops", 4: "urban"},
                              {c.value: c.color for c in plain})
    write_raster_style(path, table)
    gpkg = vectorize(path, tmp_path / "map.gpkg", progress=False)
    python = _qgis_python()
    if python is None:
        pytest.skip("QGIS's Python bindings not installed (Debian package python3-qgis; .ci/run installs it)")
    # QGIS's own environment: not this process's (rasterio points GDAL and PROJ at its wheel's data)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run([python, "-c", QGIS_OPEN, str(gpkg), str(path)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    colours = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in (c.rgb for c in table)]
    assert seen["vector"][:3] == [True, "categorizedSymbol", "class_value"]
    assert [(int(v), label, colour) for v, label, colour in seen["vector"][3]] == [
        (1, "class_1", colours[0]), (2, "class_2", colours[1]), (3, "class_3", colours[2]), (4, "class_4", colours[3])]
    assert seen["raster"] == [True, "paletted", [[1, "water", colours[0]], [2, "forest", colours[1]],
                                                 [3, "crops", colours[2]], [4, "urban", colours[3]]]]
