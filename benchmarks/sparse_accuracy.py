"""Whole-scene accuracy from sparse polygons: sparsecover's pipeline next to a per-pixel random forest.

    python benchmarks/sparse_accuracy.py [--scenes nc naip] [--seeds 0 1 2] [--protocols a b]
                                         [--recipe NAME:KEY=VALUE,...]

Scenes (../shared/data):
  nc    North Carolina Landsat 7 (nc_landsat: 6 bands, 28.5 m, 34 polygons of 7 classes, about 1.3 %
        of the pixels labelled) with its dense 1996 reference map, strata.tif; chips of 64 px, stride 16.
  naip  1 m NAIP (naip_1m: 4 bands, 25 polygons of 3 classes, about 1 % of the pixels) with the dense
        Chesapeake land cover of the same pixels; chips of 256 px, stride 64 (ArcGIS's sample settings).

Protocols:
  a  train on all polygons; score the map on every valid reference pixel outside the polygons;
  b  train on 2/3 of the polygons of each class (random per seed); score on the held-out third's
     pixels (nc only: naip's reference covers the whole scene, so (a) is its test).

Both methods learn from the very same labelled pixels (the label chips of the export, pasted back on
the scene grid) and are scored by the same code (`evaluate_map`). The random forest is scikit-learn's,
500 trees on the raw band values of each labelled pixel. Each sparsecover recipe runs the whole
pipeline: export, train (its recipe; defaults = `sparsecover train` defaults), classify, evaluate.
Prints one row per method/protocol/seed with every class's F1, then the means; the figure of merit
is the gap to the forest.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio

from sparsecover import export_training_data
from sparsecover.chips import open_chip_dataset
from sparsecover.classify import classify_pixels
from sparsecover.errors import SparsecoverWarning
from sparsecover.evaluate import evaluate_map
from sparsecover.stack import stack_bands
from sparsecover.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scene:
    """One benchmark scene: where its image, polygons and reference are, and how it is exported."""

    name: str
    folder: str
    bands: tuple[str, ...]  # one file per band, stacked; () = ``image`` is one multiband file
    band_names: tuple[str, ...]
    image: str
    polygons: str
    class_field: str
    name_field: str
    reference: str
    protocols: tuple[str, ...]
    tile_size: int
    stride: int


SCENES = {
    "nc": Scene("nc", "nc_landsat",
                ("lsat7_2000_10", "lsat7_2000_20", "lsat7_2000_30", "lsat7_2000_40", "lsat7_2000_50", "lsat7_2000_70"),
                ("blue", "green", "red", "nir", "swir1", "swir2"), "", "landsat96_polygons.shp", "id", "label",
                "strata.tif", ("a", "b"), 64, 16),
    "naip": Scene("naip", "naip_1m", (), ("red", "green", "blue", "nir"), "naip.tif", "polygons.gpkg",
                  "classvalue", "classname", "landcover_dense.tif", ("a",), 256, 64),
}
EXPORT_KEYS = ("tile_size", "stride", "all_tiles")  # export settings a recipe may override


def parse_recipe(text: str) -> tuple[str, dict, dict]:
    """'name:key=value,key=value' -> (name, TrainConfig overrides, export overrides)."""
    name, _, body = text.partition(":")
    known = {f.name: f.type for f in fields(TrainConfig)}
    config, export = {}, {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        try:
            parsed = json.loads(value)  # numbers, true/false, lists
        except ValueError:
            parsed = value  # names such as resnet18, fpn or none
        if key in EXPORT_KEYS:
            export[key] = parsed
        elif key in known:
            config[key] = parsed
        else:
            raise SystemExit(f"unknown recipe key {key!r}")
    return name, config, export


def split_polygons(polygons: gpd.GeoDataFrame, field: str, seed: int) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Protocol b: per class, a random third of the polygons (at least one of >= 2) is held out."""
    rng = np.random.default_rng(seed)
    held = []
    for _, group in polygons.groupby(field):
        n = len(group)
        k = max(1, round(n / 3)) if n >= 2 else 0
        held.extend(group.index[rng.permutation(n)[:k]])
    mask = polygons.index.isin(held)
    return polygons[~mask], polygons[mask]


def scene_labels(chips: Path, shape: tuple[int, int]) -> np.ndarray:
    """The export's label chips pasted back on the scene grid: exactly the pixels training sees."""
    dataset = open_chip_dataset(chips)
    labels = np.zeros(shape, dtype=np.uint8)
    for index, chip in enumerate(dataset.chips):
        col, row, width, height = chip.window
        _, label, _ = dataset.read(index)
        target = labels[row : row + height, col : col + width]
        np.copyto(target, label[: target.shape[0], : target.shape[1]], where=label[: target.shape[0], : target.shape[1]] > 0)
    return labels


def random_forest(scene: Path, labels: np.ndarray, out: Path, seed: int) -> tuple[Path, float]:
    """500-tree per-pixel forest on the raw bands; writes a classified GeoTIFF like `classify` does."""
    from sklearn.ensemble import RandomForestClassifier

    with rasterio.open(scene) as src:
        image = src.read()
        profile = src.profile
        valid = np.any(src.read_masks() > 0, axis=0)  # the pixels `classify` maps too
    pixels = image.reshape(image.shape[0], -1).T
    train = (labels.ravel() > 0) & valid.ravel()
    started = time.perf_counter()
    forest = RandomForestClassifier(n_estimators=500, n_jobs=-1, random_state=seed)
    forest.fit(pixels[train], labels.ravel()[train])
    seconds = time.perf_counter() - started
    predicted = np.zeros(labels.size, dtype=np.uint8)
    predicted[valid.ravel()] = forest.predict(pixels[valid.ravel()])
    profile.update(driver="GTiff", count=1, dtype="uint8", nodata=0)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(predicted.reshape(labels.shape), 1)
    return out, seconds


def scores(classified: Path, protocol: str, reference: Path, class_field: str, held: Path | None,
           train_polygons: Path, out: Path) -> dict:
    if protocol == "a":
        return evaluate_map(classified, reference, out, exclude=train_polygons,
                            progress=False)
    return evaluate_map(classified, held, out, class_field=class_field, progress=False)


def row(scene: str, method: str, protocol: str, seed: int, summary: dict, seconds: float, classes: list[int]) -> dict:
    per_class = {v: c["f1"] for v, c in zip(summary["class_values"], summary["per_class"])}
    return {"scene": scene, "method": method, "protocol": protocol, "seed": seed, "oa": summary["overall_accuracy"],
            "macro_f1": summary["macro_f1"], "kappa": summary["kappa"], "pixels": summary["pixels"],
            "f1": [per_class.get(v) if per_class.get(v) is not None else float("nan") for v in classes],
            "train_s": seconds}


def print_table(rows: list[dict], names: list[str], header: bool = True) -> None:
    if header:
        print(f"{'scene':<6}{'method':<16}{'prot':>5}{'seed':>6}{'OA':>7}{'mF1':>7}{'kappa':>7}"
              + "".join(f"{c[:6]:>7}" for c in names) + f"{'pixels':>8}{'train s':>9}")
    for r in rows:
        print(f"{r['scene']:<6}{r['method']:<16}{r['protocol']:>5}{r['seed']!s:>6}{r['oa']:>7.3f}"
              f"{r['macro_f1']:>7.3f}{r['kappa']:>7.3f}"
              + "".join(f"{v:>7.3f}" for v in r["f1"]) + f"{r['pixels']:>8.0f}{r['train_s']:>9.0f}", flush=True)


def means(rows: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["scene"], r["method"], r["protocol"]) for r in rows):
        group = [r for r in rows if (r["scene"], r["method"], r["protocol"]) == key]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class no seed's test pixels hold: nan
            f1 = np.nanmean([r["f1"] for r in group], axis=0).tolist()
        out.append({"scene": key[0], "method": key[1], "protocol": key[2], "seed": "mean",
                    **{k: float(np.mean([r[k] for r in group])) for k in ("oa", "macro_f1", "kappa", "pixels", "train_s")},
                    "f1": f1})
    return out


def run_case(scene: Scene, data: Path, protocol: str, seed: int, recipes: list, work: Path, forest: bool,
             classes: list[int], names: list[str]) -> list[dict]:
    """Every recipe (and the forest) on one scene (its folder: ``data``), protocol and seed; prints
    each row as it comes."""
    if scene.bands:
        image = stack_bands([data / f"{b}.tif" for b in scene.bands], work / f"{scene.name}.vrt",
                            band_names=list(scene.band_names), overwrite=True)
    else:
        image = data / scene.image
    with rasterio.open(image) as src:
        shape = (src.height, src.width)
    polygons = gpd.read_file(data / scene.polygons)
    case = work / f"{scene.name}_{protocol}{seed}"
    case.mkdir(exist_ok=True)
    train_frame, held_frame = (polygons, None) if protocol == "a" else split_polygons(polygons, scene.class_field, seed)
    train_path = case / "train_polygons.gpkg"
    train_frame.to_file(train_path)
    held_path = None
    if held_frame is not None:
        held_path = case / "held_polygons.gpkg"
        held_frame.to_file(held_path)
    rows: list[dict] = []
    exported: dict[tuple, Path] = {}
    for name, overrides, export in recipes:
        settings = {"tile_size": scene.tile_size, "stride": scene.stride, "all_tiles": False, **export}
        key = tuple(sorted(settings.items()))
        if key not in exported:
            exported[key] = export_training_data(
                image, train_path, case / f"chips_{len(exported)}", class_field=scene.class_field,
                class_name_field=scene.name_field, progress=False, overwrite=True, **settings)
        chips = exported[key]
        if forest and name == recipes[0][0]:
            labels = scene_labels(chips, shape)
            mapped, seconds = random_forest(image, labels, case / "forest.tif", seed)
            rows.append(row(scene.name, "random forest", protocol, seed,
                            scores(mapped, protocol, data / scene.reference, scene.class_field, held_path, train_path,
                                   case / "eval_forest"),
                            seconds, classes))
            print_table(rows[-1:], names, header=False)
        started = time.perf_counter()
        run = train(chips, case / f"run_{name}", TrainConfig(seed=seed, quiet=True, **overrides))
        seconds = time.perf_counter() - started
        mapped = classify_pixels(image, run / "model.sparsecover", case / f"{name}.tif", progress=False,
                                 overwrite=True)
        rows.append(row(scene.name, name, protocol, seed,
                        scores(mapped, protocol, data / scene.reference, scene.class_field, held_path, train_path,
                               case / f"eval_{name}"),
                        seconds, classes))
        print_table(rows[-1:], names, header=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the folder holding nc_landsat/ and naip_1m/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocols", nargs="+", default=["a", "b"], choices=["a", "b"],
                        help="those a scene has are run (naip: a)")
    parser.add_argument("--recipe", action="append", default=None,
                        help="NAME:KEY=VALUE,... TrainConfig (and tile_size/stride/all_tiles) overrides; "
                             "repeatable. Default: one recipe, 'sparsecover', with the train defaults")
    parser.add_argument("--no-forest", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    # known and expected here: one NC polygon lies outside the scene, agriculture has a single polygon,
    # naip.tif's NIR band carries an alpha tag
    warnings.simplefilter("ignore", SparsecoverWarning)
    recipes = [parse_recipe(r) for r in (args.recipe or ["sparsecover:"])]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sparse_accuracy_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir {work}")
    rows: list[dict] = []
    tables = []
    for scene in (SCENES[s] for s in args.scenes):
        data = args.data / scene.folder
        polygons = gpd.read_file(data / scene.polygons)
        labels = dict(zip(polygons[scene.class_field].astype(int), polygons[scene.name_field]))
        classes = sorted(labels)
        names = [labels[k] for k in classes]
        print(f"\n{scene.name}: {data} ({len(polygons)} polygons)")
        print_table([], names)
        scene_rows = []
        for seed in args.seeds:
            for protocol in (p for p in args.protocols if p in scene.protocols):
                scene_rows += run_case(scene, data, protocol, seed, recipes, work, not args.no_forest, classes, names)
        rows += scene_rows
        tables.append((scene_rows, names))
    print("\none row per method, protocol and seed; F1 per class; train s = training time on this machine")
    for scene_rows, names in tables:
        print()
        print_table(scene_rows + means(scene_rows), names)
    if args.json:
        args.json.write_text(json.dumps(rows + means(rows), indent=1))


if __name__ == "__main__":
    main()
