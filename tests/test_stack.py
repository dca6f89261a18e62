"""stack: one multiband raster from band files, as a VRT (no copy) or a COG."""

from __future__ import annotations

import io
import re
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

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


def _item(tmp_path, bands):
    """A STAC item whose assets are local COGs linked relative to the item, as catalogues publish them."""
    import datetime

    import pystac
    import rasterio.shutil

    folder = tmp_path / "item"
    folder.mkdir()
    item = pystac.Item("scene", geometry=None, bbox=None, datetime=datetime.datetime(2024, 6, 1), properties={})
    for index, (path, common) in enumerate(zip(bands, ["blue", "green", "swir16"])):
        cog = folder / f"B0{index + 2}.tif"
        rasterio.shutil.copy(path, cog, driver="COG")
        item.add_asset(f"B0{index + 2}", pystac.Asset(href=cog.name, media_type=pystac.MediaType.COG, roles=["data"],
                                                      extra_fields={"eo:bands": [{"name": f"B0{index + 2}",
                                                                                  "common_name": common}]}))
    item.add_asset("thumbnail", pystac.Asset(href="thumb.png", media_type=pystac.MediaType.PNG))
    item.set_self_href(str(folder / "item.json"))
    item.make_asset_hrefs_relative()
    item.save_object(include_self_link=False)
    return folder / "item.json"


def test_a_stac_items_assets_stack_by_key_or_common_name(bands, tmp_path):
    from click.testing import CliRunner

    from sparsecover.cli import cli

    item = _item(tmp_path, bands)
    out = stack_bands([item], tmp_path / "scene.vrt", assets=["B04", "blue"])
    with rasterio.open(out) as src:
        assert src.descriptions == ("swir16", "blue")
        with rasterio.open(bands[2]) as b3, rasterio.open(bands[0]) as b1:
            np.testing.assert_array_equal(src.read(1), b3.read(1))
            np.testing.assert_array_equal(src.read(2), b1.read(1))
    result = CliRunner().invoke(cli, ["stack", str(item), "--assets", "green,B04", "-o", str(tmp_path / "c.tif"), "--cog"])
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "c.tif") as src:
        assert src.descriptions == ("green", "swir16") and src.count == 2
    cases = [
        (["--assets", "B09"], "no asset 'B09'; the item has: B02 (blue/B02), B03 (green/B03), B04 (swir16/B04), thumbnail"),
        ([], "needs --assets"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(cli, ["stack", str(item), *extra, "-o", str(tmp_path / "x.vrt")])
        assert result.exit_code == 2 and message in result.output, result.output
    (tmp_path / "bad.json").write_text('{"type": "FeatureCollection"}')
    result = CliRunner().invoke(cli, ["stack", str(tmp_path / "bad.json"), "--assets", "B02", "-o", str(tmp_path / "x.vrt")])
    assert result.exit_code == 2 and "not a STAC item" in result.output
    result = CliRunner().invoke(cli, ["stack", str(bands[0]), "--assets", "B02", "-o", str(tmp_path / "x.vrt")])
    assert result.exit_code == 2 and "give the item (.json) as the only input" in result.output
    assert not (tmp_path / "x.vrt").exists()


def test_remote_asset_links_become_gdal_virtual_paths():
    from sparsecover.stac import gdal_path

    assert gdal_path("https://example.com/a/B02.tif") == "/vsicurl/https://example.com/a/B02.tif"
    assert gdal_path("s3://sentinel-cogs/tiles/B02.tif") == "/vsis3/sentinel-cogs/tiles/B02.tif"
    assert gdal_path("file:///data/my%20scene/B02.tif") == "/data/my scene/B02.tif"
    assert gdal_path("/data/B02.tif") == "/data/B02.tif"
    with pytest.raises(SparsecoverError, match="not one GDAL reads"):
        gdal_path("ftp://example.com/B02.tif")


def test_a_gdal_virtual_path_is_written_to_the_vrt_as_given(bands, tmp_path):
    """Remote assets open as /vsicurl/https://...: a Path would fold the "//"; /vsimem/ stands in."""
    from rasterio.io import MemoryFile

    with rasterio.open(bands[0]) as src, MemoryFile() as memory:
        with memory.open(**src.profile) as dst:
            dst.write(src.read())
        out = stack_bands([memory.name, bands[1]], tmp_path / "v.vrt")
        assert f'relativeToVRT="0">{memory.name}<' in out.read_text()
        with rasterio.open(out) as stacked:
            np.testing.assert_array_equal(stacked.read(1), src.read(1))


class _RangeHandler(SimpleHTTPRequestHandler):
    """A static file server that answers byte ranges, as the web servers of COG archives do (GDAL's
    /vsicurl/ reads a COG by ranges). Quiet: requests are not logged."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start, end = int(match[1]), min(int(match[2] or size - 1), size - 1)
        with path.open("rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)


def test_a_stac_item_served_over_http_stacks_its_remote_cogs(bands, tmp_path, monkeypatch):
    """An item fetched by URL whose assets are COGs on a web server (here one on this machine):
    the VRT points at them through /vsicurl/ and reads the same pixels; --cog copies them locally."""
    import functools
    import threading
    from http.server import ThreadingHTTPServer

    import pystac

    item_path = _item(tmp_path, bands)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a CI machine's proxy must not see the local server
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(item_path.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        item = pystac.Item.from_file(str(item_path))
        for asset in item.assets.values():  # absolute links, as most catalogues publish them
            asset.href = f"{base}/{Path(asset.href).name}"
        item.save_object(include_self_link=False, dest_href=str(item_path))
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            out = stack_bands([f"{base}/item.json"], tmp_path / "remote.vrt", assets=["green", "B04"])
            assert f"/vsicurl/{base}/B03.tif" in out.read_text()
            with rasterio.open(out) as src, rasterio.open(bands[1]) as b2, rasterio.open(bands[2]) as b3:
                assert src.descriptions == ("green", "swir16")
                np.testing.assert_array_equal(src.read(1), b2.read(1))
                np.testing.assert_array_equal(src.read(2), b3.read(1))
            cog = stack_bands([f"{base}/item.json"], tmp_path / "local.tif", assets=["blue"], cog=True)
        with rasterio.open(cog) as src, rasterio.open(bands[0]) as b1:
            np.testing.assert_array_equal(src.read(1), b1.read(1))
    finally:
        server.shutdown()
        server.server_close()
