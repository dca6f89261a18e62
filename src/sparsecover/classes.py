"""The class table that travels from export to the classified raster: value, name and colour.

Colours default to conventional land-cover colours when a class name says what it is (water is
blue, forest dark green), else to a qualitative palette, so a map looks familiar in QGIS without
styling; users override them with ``value=#rrggbb`` pairs.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SparsecoverError
from .staging import write_into_place

# Conventional land-cover colours (NLCD-like), matched on words in the class name.
_NAMED_COLOURS = (
    (("water", "river", "lake", "ocean", "sea"), "#476ba1"),
    (("forest", "tree", "wood"), "#1c6330"),
    (("shrub", "scrub", "bush"), "#b5a552"),
    (("herb", "grass", "meadow", "pasture"), "#d1d182"),
    (("agri", "crop", "cultiv", "farm", "planted"), "#e8d92c"),
    (("develop", "urban", "build", "impervious", "road", "parking", "settlement"), "#d9301c"),
    (("sediment", "sand", "bare", "barren", "soil", "harvest", "open"), "#b3ada3"),
    (("wetland", "marsh", "swamp"), "#75a1c7"),
    (("snow", "ice", "cloud"), "#f2f2f2"),
)

#: More distinct values than this, with no class names or colours, is an image band, not a class map.
MAX_UNNAMED_CLASSES = 100

# Qualitative palette (Tableau 10) for classes whose names say nothing.
_PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)


@dataclass(frozen=True)
class ClassInfo:
    value: int
    name: str
    color: str  # "#rrggbb"

    def as_json(self) -> dict:
        return {"value": self.value, "name": self.name, "color": self.color}

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def default_color(value: int, name: str, used: set[str]) -> str:
    lowered = name.lower()
    for words, color in _NAMED_COLOURS:
        if any(w in lowered for w in words) and color not in used:
            return color
    for offset in range(len(_PALETTE)):
        color = _PALETTE[(value - 1 + offset) % len(_PALETTE)]
        if color not in used:
            return color
    return _PALETTE[(value - 1) % len(_PALETTE)]


def build_class_table(
    values: list[int], names: dict[int, str] | None = None, colors: dict[int, str] | None = None
) -> list[ClassInfo]:
    """One entry per class value, sorted, with names (default "class_N") and colours."""
    names = names or {}
    colors = {k: normalise_color(v) for k, v in (colors or {}).items()}
    table, used = [], set(colors.values())
    for value in sorted(set(values)):
        name = names.get(value, f"class_{value}")
        color = colors.get(value) or default_color(value, name, used)
        used.add(color)
        table.append(ClassInfo(value=value, name=name, color=color))
    return table


def normalise_color(text: str) -> str:
    text = text.strip().lower()
    if not text.startswith("#"):
        text = "#" + text
    if len(text) != 7 or any(c not in "0123456789abcdef" for c in text[1:]):
        raise SparsecoverError(f"colour {text!r} is not #rrggbb")
    return text


def _pairs(text: str | None, option: str, form: str, convert) -> dict[int, str]:
    """Parse ``"1=a,2=b"`` into {1: convert("a"), 2: convert("b")}; ``form`` names the item in errors."""
    if not text:
        return {}
    pairs = {}
    for item in text.split(","):
        value, sep, rest = item.partition("=")
        if not sep or not value.strip().isdigit() or not rest.strip():
            raise SparsecoverError(f"{option} item {item!r} is not {form}")
        pairs[int(value)] = convert(rest)
    return pairs


def parse_color_pairs(text: str | None) -> dict[int, str]:
    """Parse ``"1=#ff0000,2=#00ff00"`` (the CLI's --class-colors) into {value: colour}."""
    return _pairs(text, "--class-colors", "VALUE=#rrggbb", normalise_color)


def parse_name_pairs(text: str | None) -> dict[int, str]:
    """Parse ``"1=water,2=forest"`` (the CLI's --class-names) into {value: name}."""
    return _pairs(text, "--class-names", "VALUE=NAME", str.strip)


def rgb_to_hex(rgb: list[int] | tuple[int, ...]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb[:3])


#: GDAL's raster attribute table field usages (gdal.h) that name a class and give its value.
_USAGE_NAME, _USAGE_MINMAX = 2, 5

#: GDAL's raster attribute table codes (gdal.h): field types and usages.
_RAT_FIELDS = (("Value", 0, 5), ("ClassName", 2, 2), ("Count", 0, 1), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8))


def write_class_sidecar(raster: Path, classes: list[ClassInfo], counts: Sequence[int]) -> Path:
    """Class names where GIS software reads them: GDAL's ``<raster>.aux.xml`` beside a class map.

    GeoTIFF can embed the colour table but has no tag for class names, so GDAL keeps them in this
    sidecar and reads it whenever the map is opened: category names (QGIS labels the palette
    entries with them; gdalinfo lists them) and a thematic raster attribute table (Value,
    ClassName, Count, Red, Green, Blue, as ArcGIS's Classify Pixels writes it; shown by ArcGIS Pro
    and QGIS >= 3.30). ``counts[v]``: pixels of value ``v``. Written to a temporary name and
    renamed, so it is whole or absent.
    """
    band = ET.Element("PAMRasterBand", band="1")
    categories = ET.SubElement(band, "CategoryNames")  # indexed by pixel value, gaps empty
    names = {c.value: c.name for c in classes}
    for value in range(max(names, default=0) + 1):
        ET.SubElement(categories, "Category").text = names.get(value, "")
    table = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for index, (name, kind, usage) in enumerate(_RAT_FIELDS):
        field = ET.SubElement(table, "FieldDefn", index=str(index))
        for tag, text in (("Name", name), ("Type", kind), ("Usage", usage)):
            ET.SubElement(field, tag).text = str(text)
    for index, c in enumerate(classes):
        row = ET.SubElement(table, "Row", index=str(index))
        for text in (c.value, c.name, int(counts[c.value]), *c.rgb):
            ET.SubElement(row, "F").text = str(text)
    dataset = ET.Element("PAMDataset")
    dataset.append(band)
    ET.indent(dataset)
    return write_into_place(raster.with_name(raster.name + ".aux.xml"), ET.tostring(dataset, encoding="unicode"))


def read_raster_classes(src) -> tuple[dict[int, str], dict[int, str]]:
    """Class names and colours a class raster carries: ``({value: name}, {value: "#rrggbb"})``.

    Names come from the CLASS_NAMES tag sparsecover writes, else from GDAL's category names or the
    name column of the raster attribute table in ``<raster>.aux.xml`` (what ArcGIS, QGIS and GDAL
    write); colours from the embedded colour table. Either may be empty.
    """
    try:
        colours = {int(v): rgb_to_hex(rgba) for v, rgba in src.colormap(1).items()}
    except ValueError:  # no colour table
        colours = {}
    tag = src.tags().get("CLASS_NAMES")
    if tag:
        return {int(k): v for k, v in json.loads(tag).items()}, colours
    return _sidecar_names(Path(src.name + ".aux.xml")), colours


def _sidecar_names(sidecar: Path) -> dict[int, str]:
    try:
        root = ET.parse(sidecar).getroot()
    except (OSError, ET.ParseError):
        return {}
    band = root.find("PAMRasterBand[@band='1']")
    if band is None:
        return {}
    names = {i: (c.text or "").strip() for i, c in enumerate(band.findall("CategoryNames/Category"))}
    names = {v: n for v, n in names.items() if n}
    table = band.find("GDALRasterAttributeTable")
    if names or table is None:
        return names
    usage = {int(f.get("index", -1)): int(f.findtext("Usage", "0")) for f in table.findall("FieldDefn")}
    name_col = next((i for i, u in usage.items() if u == _USAGE_NAME), None)
    value_col = next((i for i, u in usage.items() if u == _USAGE_MINMAX), None)
    if name_col is None or value_col is None:
        return {}
    for row in table.findall("Row"):
        cells = [f.text or "" for f in row.findall("F")]
        try:
            value = int(float(cells[value_col]))
        except (IndexError, ValueError):
            continue
        if cells[name_col].strip():
            names[value] = cells[name_col].strip()
    return names
