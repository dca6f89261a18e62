"""`sparsecover stack`: one multiband raster from one-file-per-band products (Landsat, Sentinel-2).

The default output is a GDAL VRT: an XML file that points at the band files, so nothing is copied
and QGIS opens it like any raster. ``cog=True`` writes a real tiled, compressed GeoTIFF instead
(GDAL's COG driver reading through the VRT, so pixels stream and memory stays bounded).

Files must share one grid (CRS, transform, size). With ``resample`` set, a band on another grid
(Sentinel-2's 20 m and 60 m bands) is resampled onto the first file's grid: by the VRT itself when
the CRS is the same, or through a warped VRT when it is not.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT

from .errors import SparsecoverError
from .raster import RasterSource, _json_number, common_dtype, copy_checked, describe, gdal_env, is_virtual, open_raster
from .stac import is_item, item_bands
from .staging import check_output

RESAMPLING_METHODS = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode")

_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


def grid_mismatch(reference: RasterSource, other: RasterSource) -> str | None:
    """Describe the first way ``other``'s grid differs from ``reference``'s, or None if it matches."""
    if reference.crs != other.crs:
        return f"CRS {other.crs.to_string()} differs from {reference.crs.to_string()}"
    ref_res, res = reference.resolution, other.resolution
    if not np.allclose(ref_res, res, rtol=1e-9, atol=0):
        return f"resolution {res[0]:g} x {res[1]:g} differs from {ref_res[0]:g} x {ref_res[1]:g}"
    tolerance = 1e-6 * ref_res[0]
    if not np.allclose(reference.transform[:6], other.transform[:6], rtol=0, atol=tolerance):
        return (
            f"origin ({other.transform.c:.3f}, {other.transform.f:.3f}) differs from "
            f"({reference.transform.c:.3f}, {reference.transform.f:.3f})"
        )
    if (reference.width, reference.height) != (other.width, other.height):
        return (
            f"size {other.width} x {other.height} differs from {reference.width} x {reference.height}"
        )
    return None


def stack_bands(
    inputs: list[str | Path],
    output: str | Path,
    band_names: list[str] | None = None,
    resample: str | None = None,
    cog: bool = False,
    overwrite: bool = False,
    assets: list[str] | None = None,
) -> Path:
    """Stack band files into one multiband raster (VRT by default, Cloud-Optimized GeoTIFF with ``cog``).

    Every band of every input is kept, in order, with its nodata value and a name (``band_names``,
    else the band's description, else the file name). The common dtype holds every band's values.
    ``inputs`` may instead be one STAC item (a .json file or URL): ``assets`` names the bands to
    stack (asset keys or common names, in order), which may be remote COGs (see :mod:`stac`).
    """
    if not inputs:
        raise SparsecoverError("stack needs at least one band file")
    if len(inputs) == 1 and is_item(inputs[0]):
        inputs, item_names = item_bands(inputs[0], assets)
        band_names = band_names or item_names
    elif assets:
        raise SparsecoverError("--assets picks bands of a STAC item; give the item (.json) as the only input")
    if resample is not None and resample not in RESAMPLING_METHODS:
        raise SparsecoverError(
            f"unknown resampling method {resample!r}; choose one of {', '.join(RESAMPLING_METHODS)}"
        )
    output = Path(output)
    check_output(output, overwrite)
    sources = []
    for path in inputs:
        with open_raster(path) as src:
            sources.append(describe(src))
    # what GDAL opened, for the VRT: a virtual path as given (a Path folds its "//")
    locations = [str(p) if is_virtual(p) else Path(p) for p in inputs]
    reference = sources[0]
    total_bands = sum(len(s.bands) for s in sources)
    if band_names is not None and len(band_names) != total_bands:
        raise SparsecoverError(
            f"--band-names lists {len(band_names)} names but the inputs hold {total_bands} bands"
        )
    for source in sources[1:]:
        problem = grid_mismatch(reference, source)
        if problem and resample is None:
            raise SparsecoverError(
                f"{source.path}: grid does not match {reference.path.name}: {problem}; "
                f"pass --resample bilinear (or nearest, ...) to align it to the first file's grid"
            )
    dtype = common_dtype([b.dtype for s in sources for b in s.bands])

    # The VRT is written beside its final place (relative source paths stay right), checked, renamed.
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    vrt_path = work / "stack.vrt" if cog else output.parent / f".{output.name}.partial.vrt"
    try:
        helpers = work if cog else output.parent  # warped VRTs of other-CRS bands live beside a VRT
        root = _vrt_document(sources, locations, reference, dtype, band_names, resample, vrt_path, helpers)
        ET.ElementTree(root).write(vrt_path, encoding="utf-8", xml_declaration=False)
        with gdal_env():
            if cog:
                _write_cog(vrt_path, work / "stack.tif", output)
            else:
                with open_raster(vrt_path) as check:  # GDAL must be able to read what we wrote
                    check.read(window=((0, 1), (0, 1)))
        os.replace(work / "stack.tif" if cog else vrt_path, output)
    finally:
        vrt_path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return output


def _vrt_document(
    sources: list[RasterSource],
    locations: list[str | Path],
    reference: RasterSource,
    dtype: str,
    band_names: list[str] | None,
    resample: str | None,
    vrt_path: Path,
    helpers_dir: Path,
) -> ET.Element:
    """The VRT XML: one VRTRasterBand per input band, each pointing at its file."""
    root = ET.Element(
        "VRTDataset", rasterXSize=str(reference.width), rasterYSize=str(reference.height)
    )
    srs = ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2")
    srs.text = reference.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(v) for v in reference.transform.to_gdal()
    )
    out_band = 0
    for source, location in zip(sources, locations):
        mismatch = grid_mismatch(reference, source) is not None
        path = location
        if mismatch and source.crs != reference.crs:
            path = _warped_vrt(source, location, reference, resample or "nearest", helpers_dir)
        for band, index in zip(source.bands, source.band_indexes):
            out_band += 1
            element = ET.SubElement(
                root, "VRTRasterBand", dataType=_GDAL_TYPES[dtype], band=str(out_band)
            )
            name = band_names[out_band - 1] if band_names else band.name
            ET.SubElement(element, "Description").text = name
            if band.nodata is not None:
                ET.SubElement(element, "NoDataValue").text = str(_json_number(band.nodata))
            kind = "ComplexSource" if band.nodata is not None else "SimpleSource"
            attrs = {"resampling": resample} if mismatch and resample else {}
            src_el = ET.SubElement(element, kind, **attrs)
            if isinstance(path, Path):
                rel = os.path.relpath(path.resolve(), vrt_path.parent.resolve())
                ET.SubElement(src_el, "SourceFilename", relativeToVRT="1").text = rel
            else:
                ET.SubElement(src_el, "SourceFilename", relativeToVRT="0").text = path
            ET.SubElement(src_el, "SourceBand").text = str(index)
            if mismatch and source.crs == reference.crs:
                _add_rects(src_el, source, reference)
            if band.nodata is not None:
                ET.SubElement(src_el, "NODATA").text = str(_json_number(band.nodata))
    return root


def _add_rects(element: ET.Element, source: RasterSource, reference: RasterSource) -> None:
    """Place a same-CRS source of another resolution or extent on the reference grid."""
    inv = ~reference.transform
    x0, y0 = inv @ (source.transform.c, source.transform.f)
    x1, y1 = inv @ (source.transform @ (source.width, source.height))
    ET.SubElement(
        element, "SrcRect", xOff="0", yOff="0", xSize=str(source.width), ySize=str(source.height)
    )
    ET.SubElement(
        element,
        "DstRect",
        xOff=repr(float(x0)),
        yOff=repr(float(y0)),
        xSize=repr(float(x1 - x0)),
        ySize=repr(float(y1 - y0)),
    )


def _warped_vrt(source: RasterSource, location: str | Path, reference: RasterSource, method: str,
                folder: Path) -> Path:
    """A warped VRT of ``source`` (opened from ``location``) on the reference grid, written beside the output."""
    target = folder / f"{source.path.stem}.warped.vrt"  # referenced by the stack VRT
    try:
        with rasterio.open(location) as src, WarpedVRT(
            src,
            crs=reference.crs,
            transform=reference.transform,
            width=reference.width,
            height=reference.height,
            resampling=Resampling[method],
        ) as vrt:
            rasterio.shutil.copy(vrt, target, driver="VRT")
    except RasterioError as exc:
        raise SparsecoverError(f"{source.path}: cannot reproject onto the first file's grid ({exc})")
    return target


def _write_cog(source: Path, target: Path, output: Path) -> None:
    """Copy through GDAL's COG driver: tiled, deflate-compressed, with overviews, streamed."""
    copy_checked(source, target, output, driver="COG", compress="DEFLATE", predictor="YES", bigtiff="IF_SAFER",
                 num_threads="ALL_CPUS")
