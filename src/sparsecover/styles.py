"""QGIS styles for sparsecover's maps, so they open in the map's colours with class names and no clicks.

QGIS loads a raster's default style from a ``.qml`` file beside it with the same base name, and a
GeoPackage layer's default style from the file's ``layer_styles`` table (the QGIS GeoPackage
styling extension: the row for the layer with ``useAsDefault`` set). ArcGIS reads neither; it
takes colours from the GeoTIFF's colour table and names from the ``.aux.xml`` attribute table
(:func:`classes.write_class_sidecar`), which QGIS reads too when no ``.qml`` is there.
"""

from __future__ import annotations

import datetime as _dt
import xml.etree.ElementTree as ET
from pathlib import Path

from .classes import ClassInfo
from .staging import write_into_place

#: The QGIS version the styles are written as; QGIS reads styles of older versions unchanged.
QGIS_VERSION = "3.34.0"
STYLE_TABLE = "layer_styles"


def _document(categories: str) -> ET.Element:
    return ET.Element("qgis", version=QGIS_VERSION, styleCategories=categories)


def _text(root: ET.Element) -> str:
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode") + "\n"


def _rgba(c: ClassInfo) -> str:
    return ",".join(str(v) for v in (*c.rgb, 255))


def raster_qml(classes: list[ClassInfo]) -> str:
    """A paletted (unique values) renderer of band 1 with each class's colour and name."""
    root = _document("Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1",
                             alphaBand="-1", nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for c in classes:
        ET.SubElement(palette, "paletteEntry", value=str(c.value), color=c.color, alpha="255", label=c.name)
    return _text(root)


def vector_qml(classes: list[ClassInfo], field: str) -> str:
    """A categorized fill renderer on ``field`` with each class's colour and name (no outlines:
    neighbouring polygons share edges, and outlines would hide small ones at full extent)."""
    root = _document("Symbology")
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=field, forceraster="0",
                             symbollevels="0", enableorderby="0", referencescale="-1")
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for index, c in enumerate(classes):
        ET.SubElement(categories, "category", value=str(c.value), label=c.name, symbol=str(index),
                      render="true", type="long")
        symbol = ET.SubElement(symbols, "symbol", type="fill", name=str(index), alpha="1",
                               clip_to_extent="1", force_rhr="0")
        layer = ET.SubElement(symbol, "layer", attrib={"class": "SimpleFill", "enabled": "1", "pass": "0", "locked": "0"})
        options = ET.SubElement(layer, "Option", type="Map")
        props = {"color": _rgba(c), "style": "solid", "outline_style": "no", "outline_color": _rgba(c),
                 "outline_width": "0", "outline_width_unit": "MM", "joinstyle": "bevel"}
        for key, value in props.items():
            ET.SubElement(options, "Option", name=key, type="QString", value=value)
        for key, value in props.items():  # what QGIS before 3.26 reads
            ET.SubElement(layer, "prop", k=key, v=value)
    return _text(root)


def write_raster_style(raster: Path, classes: list[ClassInfo]) -> Path:
    """``<raster stem>.qml`` beside a class map (QGIS's default style for it); whole or absent."""
    return write_into_place(raster.with_suffix(".qml"), raster_qml(classes))


def add_layer_style(gpkg: Path, layer: str, classes: list[ClassInfo], field: str) -> None:
    """Store the categorized style as ``layer``'s default in the GeoPackage's ``layer_styles`` table."""
    import pandas as pd
    import pyogrio

    row = pd.DataFrame({
        "f_table_catalog": [""], "f_table_schema": [""], "f_table_name": [layer],
        "f_geometry_column": ["geom"], "styleName": [layer], "styleQML": [vector_qml(classes, field)],
        "styleSLD": [""], "useAsDefault": [True], "description": ["class colours and names from sparsecover"],
        "owner": [""], "ui": [""], "update_time": [_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)],
    })
    exists = STYLE_TABLE in {name for name, _ in pyogrio.list_layers(gpkg)}
    pyogrio.write_dataframe(row, gpkg, layer=STYLE_TABLE, driver="GPKG", append=exists,
                            layer_options=None if exists else {"FID": "id"})
