"""STAC items as input to `stack`: the band files an item's assets point at, and their names.

Imagery often arrives as a STAC item (JSON) with one asset per band, Cloud-Optimized GeoTIFFs on
a web or S3 server. pystac reads the item and resolves relative asset links; each asset becomes a
path GDAL opens (local files as they are, http(s) through ``/vsicurl/``, s3 through ``/vsis3/``,
Google Cloud Storage through ``/vsigs/``, Azure through ``/vsiaz/``) and a band name: the asset's
common name (``eo:bands`` in STAC 1.0, ``bands`` in 1.1), else its band name, else the asset key.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import SparsecoverError

_VSI = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}


def is_item(path: str | Path) -> bool:
    """Whether an input of `stack` names a STAC item (a .json file or URL) rather than a raster."""
    return str(path).lower().split("?")[0].endswith(".json")


def gdal_path(href: str) -> str:
    """The path GDAL opens for an asset's absolute href."""
    url = urlparse(href)
    if url.scheme in ("http", "https"):
        return _VSI[url.scheme] + href
    if url.scheme in _VSI:
        return f"{_VSI[url.scheme]}{url.netloc}{url.path}"
    if url.scheme == "file":
        return unquote(url.path)
    if url.scheme == "" or len(url.scheme) == 1:  # a local path (a Windows drive letter parses as a scheme)
        return href
    raise SparsecoverError(f"{href}: asset link scheme {url.scheme!r} is not one GDAL reads (file, http(s), s3, gs, az)")


def _names(asset) -> list[str]:
    """The names an asset answers to, best first: common names, band names."""
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    common = [b.get("common_name") or b.get("eo:common_name") for b in bands]
    named = [b.get("name") for b in bands]
    return [n for n in common + named if n]


def item_bands(item: str | Path, assets: list[str] | None) -> tuple[list[str], list[str]]:
    """GDAL paths and band names of ``assets`` (asset keys or band common names) of a STAC item."""
    import pystac

    if assets is None or not assets:
        raise SparsecoverError(f"{item}: a STAC item needs --assets naming the bands to stack, e.g. B02,B03,B04,B08")
    location = str(item)
    if "://" not in location and not Path(location).exists():
        raise SparsecoverError(f"{item}: file not found")
    try:
        stac = pystac.Item.from_file(location)
    except Exception as exc:  # pystac raises JSON, STAC, URL and key errors alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SparsecoverError(f"{item}: not a STAC item pystac can read ({first})") from None
    paths, names = [], []
    for wanted in assets:
        key = wanted if wanted in stac.assets else next(
            (k for k, a in stac.assets.items() if wanted in _names(a)), None)
        if key is None:
            listed = ", ".join(f"{k} ({'/'.join(_names(a))})" if _names(a) else k for k, a in stac.assets.items())
            raise SparsecoverError(f"{item}: no asset {wanted!r}; the item has: {listed}")
        asset = stac.assets[key]
        href = asset.get_absolute_href()
        if href is None:
            raise SparsecoverError(f"{item}: asset {key!r} has a relative link and the item no location to resolve it")
        paths.append(gdal_path(href))
        names.append((_names(asset) or [key])[0])
    return paths, names
