"""stack: one multiband raster from band files, as a VRT (no copy) or a COG."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from conftest import write_raster
from sparsecover import SparsecoverError, stack_bands


@pytest.fixture
def bands(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (dtype, nodata) in enumerate([("uint16", 0), ("uint16", 0), ("int16", -32768)]):
        data = rng.integers(1, 3000, (1, 60, 80)).astype(dtype)
        data[0, :5] = nodata
        paths.append(write_raster(tmp_path / f"B{i + 1}.tif", data, nodata=nodata))
    return paths


def test_vrt_stack_keeps_values_names_and_per_band_nodata(bands, tmp_path):
    out = stack_bands(bands, tmp_path / "scene.vrt", band_names=["blue", "green", "swir"])
    assert out.read_text().startswith("<VRTDataset")
    with rasterio.open(out) as src:
        assert src.count == 3 and src.dtypes == ("int32",) * 3  # uint16 + int16 -> int32
        assert src.descriptions == ("blue", "green", "swir")
        assert src.nodatavals == (0.0, 0.0, -32768.0)
        for b, path in enumerate(bands, 1):
            with rasterio.open(path) as band:
                np.testing.assert_array_equal(src.read(b), band.read(1))
                assert src.transform == band.transform and src.crs == band.crs


def test_default_band_names_are_file_names(bands, tmp_path):
    with rasterio.open(stack_bands(bands, tmp_path / "s.vrt")) as src:
        assert src.descriptions == ("B1", "B2", "B3")


def test_cog_writes_a_real_tiled_geotiff(bands, tmp_path):
    out = stack_bands(bands, tmp_path / "scene.tif", cog=True)
    with rasterio.open(out) as src:
        assert src.driver == "GTiff" and src.profile["tiled"] and src.count == 3
        assert src.compression is not None
        with rasterio.open(bands[2]) as band:
            np.testing.assert_array_equal(src.read(3), band.read(1))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_mismatched_grid_is_refused_naming_the_difference(bands, tmp_path):
    coarse = write_raster(tmp_path / "B20m.tif", np.ones((1, 30, 40), "uint16"), res=20.0)
    with pytest.raises(SparsecoverError, match=r"B20m.tif: grid does not match B1.tif: resolution 20 x 20 differs from 10 x 10; pass --resample"):
        stack_bands([bands[0], coarse], tmp_path / "s.vrt")
    other_crs = write_raster(tmp_path / "Butm.tif", np.ones((1, 60, 80), "uint16"), crs=CRS.from_epsg(32617))
    with pytest.raises(SparsecoverError, match=r"Butm.tif: grid does not match B1.tif: CRS EPSG:32617 differs"):
        stack_bands([bands[0], other_crs], tmp_path / "s.vrt")
    assert not (tmp_path / "s.vrt").exists()


def test_resample_aligns_a_coarser_band_to_the_first_grid(bands, tmp_path):
    coarse_data = np.arange(30 * 40, dtype="uint16").reshape(1, 30, 40)
    coarse = write_raster(tmp_path / "B20m.tif", coarse_data, res=20.0)
    out = stack_bands([bands[0], coarse], tmp_path / "s.vrt", resample="nearest")
    with rasterio.open(out) as src:
        assert src.count == 2 and src.shape == (60, 80)
        np.testing.assert_array_equal(src.read(2), np.repeat(np.repeat(coarse_data[0], 2, 0), 2, 1))


def test_resample_reprojects_a_band_in_another_crs(bands, tmp_path):
    with rasterio.open(bands[0]) as src:
        bounds = src.bounds
    from rasterio.warp import transform_bounds
    west, south, east, north = transform_bounds("EPSG:32618", "EPSG:4326", *bounds)
    res = (east - west) / 80
    data = np.full((1, 70, 90), 7, dtype="uint16")
    geo = write_raster(tmp_path / "Bgeo.tif", data, crs=CRS.from_epsg(4326), res=res,
                       origin=(west - 5 * res, north + 5 * res))
    out = stack_bands([bands[0], geo], tmp_path / "s.vrt", resample="nearest")
    with rasterio.open(out) as src:
        values = src.read(2)
        assert values.shape == (60, 80) and (values == 7).mean() > 0.95


def test_bad_arguments(bands, tmp_path):
    with pytest.raises(SparsecoverError, match="--band-names lists 2 names but the inputs hold 3 bands"):
        stack_bands(bands, tmp_path / "s.vrt", band_names=["a", "b"])
    with pytest.raises(SparsecoverError, match="unknown resampling method 'fancy'"):
        stack_bands(bands, tmp_path / "s.vrt", resample="fancy")
    (tmp_path / "s.vrt").write_text("x")
    with pytest.raises(SparsecoverError, match="already exists; pass --overwrite"):
        stack_bands(bands, tmp_path / "s.vrt")
    stack_bands(bands, tmp_path / "s.vrt", overwrite=True)
