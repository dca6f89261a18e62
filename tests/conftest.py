"""Fixtures: small generated scenes (so the suite means something on a fresh machine) and ../shared/data."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from shapely.geometry import Polygon, box

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: The per-pixel model's fit in a tenth of its steps: for the tests of what carries the fit
#: (determinism, resume, ensembles, fine-tuning, packages), not of what it learns (test_spectral.py)
SHORT_SPECTRAL_STEPS = 200

UTM = CRS.from_epsg(32618)
ORIGIN = (500_000.0, 4_500_000.0)
RES = 10.0


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real data not found at {SHARED} (the project's ../shared/data)")
    return SHARED


def write_raster(path: Path, data: np.ndarray, nodata=None, crs=UTM, res=RES, origin=ORIGIN,
                 names=None) -> Path:
    """Write (bands, h, w) data as a GeoTIFF on a north-up grid."""
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs=crs, transform=from_origin(*origin, res, res), nodata=nodata,
    ) as dst:
        dst.write(data)
        if names:
            dst.descriptions = tuple(names)
    return path


def assert_same_map(a: Path, b: Path) -> None:
    """Two class maps equal pixel for pixel, and not because both are empty (all nodata)."""
    with rasterio.open(a) as first, rasterio.open(b) as second:
        x, y = first.read(1), second.read(1)
    assert x.shape == y.shape and x.any(), f"{a}: no classified pixel"
    assert np.array_equal(x, y)


def make_scene(folder: Path, width=200, height=150, dtype="uint16") -> Path:
    """A 4-band scene with a nodata (0) border on the left and smooth, class-dependent values."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    bands = [100 + x + b * 50 + rng.integers(0, 20, (height, width)) for b in range(4)]
    data = np.stack(bands).astype(dtype)
    data[:, :, :12] = 0  # nodata stripe
    return write_raster(folder / "scene.tif", data, nodata=0, names=["blue", "green", "red", "nir"])


def scene_polygons(crs=UTM) -> gpd.GeoDataFrame:
    """Three classes of polygons on the scene (one touching the nodata stripe), plus one far outside."""
    x0, y0 = ORIGIN
    def rect(c0, r0, c1, r1):  # a quarter pixel off the grid: all_touched is ill-defined on edges
        return box(x0 + (c0 + 0.25) * RES, y0 - (r1 + 0.25) * RES, x0 + (c1 + 0.25) * RES,
                   y0 - (r0 + 0.25) * RES)
    rows = [
        (1, "water", rect(2, 10, 40, 40)),            # overlaps the nodata stripe (columns 0..11)
        (2, "forest", rect(60, 20, 90, 60)),
        (2, "forest", rect(130, 100, 170, 140)),
        (3, "developed", Polygon([(x0 + 1000.5, y0 - 802.5), (x0 + 1400.3, y0 - 805), (x0 + 1202.5, y0 - 1102.5)])),
        (3, "developed", rect(5000, 5000, 5010, 5010)),  # outside the scene
    ]
    frame = gpd.GeoDataFrame(
        {"classvalue": [r[0] for r in rows], "classname": [r[1] for r in rows]},
        geometry=[r[2] for r in rows], crs=UTM,
    )
    return frame.to_crs(crs)


@pytest.fixture
def scene(tmp_path) -> tuple[Path, Path]:
    """(raster, polygons.gpkg): polygons stored in EPSG:4326 so export must reproject them."""
    raster = make_scene(tmp_path)
    labels = tmp_path / "labels.gpkg"
    scene_polygons(CRS.from_epsg(4326)).to_file(labels, driver="GPKG")
    return raster, labels


def class_polygons(values=(1, 2, 3), per_class=3, size=128) -> gpd.GeoDataFrame:
    """Several small squares per class on a size x size scene (so every class can be validated)."""
    x0, y0 = ORIGIN
    rows = []
    rng = np.random.default_rng(3)
    cells = [(r, c) for r in range(4) for c in range(4)]
    order = rng.permutation(len(cells))
    k = 0
    for value in values:
        for _ in range(per_class):
            r, c = cells[order[k] % len(cells)]
            k += 1
            cell = size / 4
            west, north = x0 + (c * cell + 4.25) * RES, y0 - (r * cell + 4.25) * RES
            rows.append((value, f"class{value}", box(west, north - 14 * RES, west + 14 * RES, north)))
    return gpd.GeoDataFrame({"classvalue": [r[0] for r in rows], "classname": [r[1] for r in rows]},
                            geometry=[r[2] for r in rows], crs=UTM)


def make_class_scene(folder: Path, polygons: gpd.GeoDataFrame, size=128) -> Path:
    """A 4-band uint16 scene whose values depend on the class under each pixel (learnable)."""
    from rasterio import features as rfeatures
    from rasterio.transform import from_origin

    transform = from_origin(*ORIGIN, RES, RES)
    classes = rfeatures.rasterize(zip(polygons.geometry, polygons["classvalue"]), out_shape=(size, size),
                                  transform=transform, dtype="uint8")
    rng = np.random.default_rng(0)
    base = rng.normal(1000, 30, (4, size, size))
    signature = {0: (0, 0, 0, 0), 1: (300, -200, 100, 0), 2: (-200, 300, 0, 200), 3: (0, 100, -300, 300),
                 5: (200, 200, 200, -200), 9: (-300, -300, 300, 100)}
    for value, sig in signature.items():
        base[:, classes == value] += np.array(sig)[:, None]
    return write_raster(folder / "classes_scene.tif", base.astype("uint16"), nodata=0,
                        names=["blue", "green", "red", "nir"])


@pytest.fixture(scope="session")
def train_chips(tmp_path_factory) -> Path:
    """A small chip dataset with 3 classes x 3 polygons (tile 32, stride 16)."""
    from sparsecover import export_training_data

    folder = tmp_path_factory.mktemp("trainchips")
    polygons = class_polygons()
    raster = make_class_scene(folder, polygons)
    labels = folder / "polygons.gpkg"
    polygons.to_file(labels)
    return export_training_data(raster, labels, folder / "chips", class_field="classvalue",
                                class_name_field="classname", tile_size=32, stride=16, progress=False)


@pytest.fixture(scope="session")
def trained_model(train_chips, tmp_path_factory) -> Path:
    """One small trained run (ONNX included) for every test that needs a model but not a particular one."""
    from sparsecover.train import TrainConfig, train

    run = tmp_path_factory.mktemp("trained") / "run"
    return train(train_chips, run, TrainConfig(backbone="resnet18", epochs=1, lr=1e-3, quiet=True, onnx=True,
                                                  refit=False))


@pytest.fixture
def short_spectral_fit(monkeypatch):
    from sparsecover import spectral

    monkeypatch.setattr(spectral, "STEPS", SHORT_SPECTRAL_STEPS)
