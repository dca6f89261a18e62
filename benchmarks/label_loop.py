"""The labelling loop with a simulated annotator: do `suggest`'s squares help more than random ones?

    python benchmarks/label_loop.py [--seeds 0 1 2] [--rounds 4] [--squares 20] [--size 5] [--strategies ...]

NC Landsat scene (../shared/data/nc_landsat). Each seed starts from one polygon per class (drawn
at random per seed) and trains the default recipe. Then, per strategy, ``--rounds`` times: the
strategy names ``--squares`` squares of ``--size`` px, the annotator labels each with the majority
class of the dense reference (strata.tif) inside it (a square whose majority is unlabelled in the
reference is skipped and the strategy's next square taken, so every strategy gets the same number
of labelled pixels), and the model is trained again from scratch on the polygons plus every square
so far (export -> train -> classify, all defaults). Each map is scored against strata.tif on every
reference pixel outside the strategy's labels.

Strategies (class turns x uncertainty, and neither):
  suggest     `sparsecover suggest`: the most uncertain squares, spread out, every predicted class once
  uncertain   the most uncertain squares, spread out (suggest without its class coverage)
  stratified  random squares, the same number in every predicted class
  random      squares at random on valid pixels, away from the labels (the same candidate rules)

Prints macro-F1 / kappa per round, strategy and seed, then the means, and writes a plot of macro-F1
against labelled pixels (``--plot``).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio import features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse_accuracy import SCENES  # noqa: E402  (the benchmarks folder is not a package)

from sparsecover import export_training_data  # noqa: E402
from sparsecover.classify import classify_pixels  # noqa: E402
from sparsecover.errors import SparsecoverWarning  # noqa: E402
from sparsecover.evaluate import evaluate_map  # noqa: E402
from sparsecover.stack import stack_bands  # noqa: E402
from sparsecover.suggest import choose_cells, excluded_cells, read_cells, suggest_labels  # noqa: E402
from sparsecover.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("suggest", "uncertain", "stratified", "random")
SPARE = 3  # squares asked for per square wanted: some fall where the reference has no class


def first_polygons(polygons: gpd.GeoDataFrame, field: str, seed: int) -> gpd.GeoDataFrame:
    """One polygon per class, drawn at random."""
    rng = np.random.default_rng(seed)
    picks = [group.index[rng.integers(len(group))] for _, group in polygons.groupby(field)]
    return polygons.loc[sorted(picks)]


def annotate(squares: gpd.GeoDataFrame, reference: np.ndarray, transform, field: str, wanted: int) -> gpd.GeoDataFrame:
    """The annotator: each square gets the reference's majority class inside it; the first ``wanted``
    squares with a class are kept, in the strategy's order."""
    inverse = ~transform
    values = []
    for square in squares.geometry:
        west, south, east, north = square.bounds
        col0, row0 = (round(v) for v in inverse * (west, north))
        col1, row1 = (round(v) for v in inverse * (east, south))
        patch = reference[row0:row1, col0:col1].ravel()
        counts = np.bincount(patch, minlength=256)
        counts[0] = 0
        values.append(int(counts.argmax()) if counts.max() > patch.size // 2 else 0)
    labelled = squares.assign(**{field: values})
    return labelled[labelled[field] > 0].head(wanted)


def random_squares(cells, allowed: np.ndarray, n: int, rng, stratified: bool) -> gpd.GeoDataFrame:
    """``n`` random allowed cells as squares; ``stratified``: the same number in every predicted class."""
    rows, cols = np.nonzero(allowed)
    if stratified:
        classes = cells.predicted[rows, cols]
        values = np.unique(classes[classes > 0])
        per_class = [rng.permutation(np.flatnonzero(classes == v)) for v in values]
        order = [i for group in zip(*[np.resize(p, n) for p in per_class]) for i in group]  # round robin
        order = list(dict.fromkeys(order))[:n]
    else:
        order = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return gpd.GeoDataFrame(geometry=[cells.square(int(rows[i]), int(cols[i])) for i in order], crs=cells.crs)


def uncertain_squares(cells, allowed: np.ndarray, n: int, seed: int) -> gpd.GeoDataFrame:
    """suggest's rule with every candidate cell in one class: the most uncertain cells, spread out."""
    one_class = replace(cells, predicted=(cells.predicted > 0).astype(np.uint8))
    return gpd.GeoDataFrame(geometry=[cells.square(r, c) for r, c in choose_cells(one_class, allowed, n, seed)],
                            crs=cells.crs)


def score(mapped: Path, reference: Path, labels: Path, out: Path) -> dict:
    summary = evaluate_map(mapped, reference, out, exclude=labels, progress=False)
    return {"oa": summary["overall_accuracy"], "macro_f1": summary["macro_f1"], "kappa": summary["kappa"]}


def fit_and_map(image: Path, labels: Path, field: str, work: Path, seed: int,
                epochs: int) -> tuple[Path, Path, Path, float]:
    """export -> train -> classify (with its uncertainty) with the defaults; (model, map, uncertainty, train s)."""
    scene = SCENES["nc"]
    work.mkdir(parents=True, exist_ok=True)
    chips = export_training_data(image, labels, work / "chips", class_field=field, tile_size=scene.tile_size,
                                 stride=scene.stride, progress=False, overwrite=True)
    started = time.perf_counter()
    run = train(chips, work / "run", TrainConfig(seed=seed, epochs=epochs, quiet=True))
    seconds = time.perf_counter() - started
    model = run / "model.sparsecover"
    mapped = classify_pixels(image, model, work / "map.tif", uncertainty=work / "uncertainty.tif", progress=False,
                             overwrite=True)
    return model, mapped, work / "uncertainty.tif", seconds


def run_seed(seed: int, args, image: Path, data: Path, work: Path) -> list[dict]:
    scene = SCENES["nc"]
    field = scene.class_field
    with rasterio.open(data / scene.reference) as src:
        reference, transform, crs, nodata = src.read(1), src.transform, src.crs, src.nodata
    reference = np.where(reference == (nodata if nodata is not None else 0), 0, reference).astype(np.uint8)
    polygons = gpd.read_file(data / scene.polygons).to_crs(crs)
    start = first_polygons(polygons, field, seed)[[field, "geometry"]]
    base = work / f"seed{seed}"
    base.mkdir(parents=True, exist_ok=True)
    labels0 = base / "labels_round0.gpkg"
    start.to_file(labels0)
    model, mapped, unc, seconds = fit_and_map(image, labels0, field, base / "round0", seed, args.epochs)
    first = score(mapped, data / scene.reference, labels0, base / "round0" / "eval")
    pixels0 = int(features.rasterize(start.geometry, out_shape=reference.shape, transform=transform,
                                     all_touched=True).sum())
    rows = [dict(strategy=s, seed=seed, round=0, pixels=pixels0, train_s=seconds, **first) for s in args.strategies]
    print_rows(rows)
    rng_root = np.random.default_rng(seed)
    draws = {s: rng_root.integers(1 << 31) for s in STRATEGIES}  # the same for a strategy run alone
    for strategy in args.strategies:
        rng = np.random.default_rng(draws[strategy])
        labelled, current = start, (model, mapped, unc)
        folder = base / strategy
        folder.mkdir(exist_ok=True)
        for k in range(1, args.rounds + 1):
            labels_path = folder / f"labels_round{k - 1}.gpkg"
            labelled.to_file(labels_path)
            asked = args.squares * SPARE
            if strategy == "suggest":
                suggestions = suggest_labels(image, current[0], folder / f"suggested_round{k}.gpkg", n=asked,
                                             size=args.size, labels=labels_path, seed=seed, overwrite=True,
                                             progress=False)
                squares = gpd.read_file(suggestions)[["geometry"]]
            else:
                cells = read_cells(current[1], current[2], args.size)
                allowed = cells.valid & ~excluded_cells(labelled, labels_path, cells)
                if strategy == "uncertain":
                    squares = uncertain_squares(cells, allowed & cells.candidates, asked, seed)
                else:
                    squares = random_squares(cells, allowed, asked, rng, strategy == "stratified")
            new = annotate(squares.to_crs(crs), reference, transform, field, args.squares)
            labelled = gpd.GeoDataFrame(pd.concat([labelled, new[[field, "geometry"]]], ignore_index=True), crs=crs)
            labels_path = folder / f"labels_round{k}.gpkg"
            labelled.to_file(labels_path)
            current = fit_and_map(image, labels_path, field, folder / f"round{k}", seed, args.epochs)
            result = score(current[1], data / scene.reference, labels_path, folder / f"round{k}" / "eval")
            pixels = int(features.rasterize(labelled.geometry, out_shape=reference.shape, transform=transform,
                                            all_touched=True).sum())
            rows.append(dict(strategy=strategy, seed=seed, round=k, pixels=pixels, train_s=current[3], **result))
            print_rows(rows[-1:])
    return rows


HEADER = f"{'strategy':<11} {'seed':>4} {'round':>5} {'pixels':>7} {'OA':>6} {'mF1':>6} {'kappa':>6} {'train s':>8}"


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        seed = r["seed"] if isinstance(r["seed"], str) else f"{r['seed']:d}"
        print(f"{r['strategy']:<11} {seed:>4} {r['round']:>5} {r['pixels']:>7.0f} {r['oa']:>6.3f} "
              f"{r['macro_f1']:>6.3f} {r['kappa']:>6.3f} {r['train_s']:>8.0f}", flush=True)


def means(rows: list[dict]) -> list[dict]:
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["strategy", "round"], sort=False)[["pixels", "oa", "macro_f1", "kappa", "train_s"]].mean()
    return [dict(strategy=s, seed="mean", round=k, **values) for (s, k), values in grouped.iterrows()]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        ax.plot([r["pixels"] for r in mine], [r["macro_f1"] for r in mine], marker="o", label=strategy)
    ax.set_xlabel("labelled pixels (mean over seeds)")
    ax.set_ylabel("macro-F1 outside the labels")
    ax.set_title("NC Landsat: labelling loop, simulated annotator")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, help="Keep every round's files here (default: a temporary folder).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--squares", type=int, default=20)
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10, help="Training epochs (10: the default recipe's).")
    parser.add_argument("--plot", type=Path, help="PNG of macro-F1 against labelled pixels.")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    args = parser.parse_args()
    warnings.simplefilter("ignore", SparsecoverWarning)
    import tempfile

    data = args.data / SCENES["nc"].folder
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scene = SCENES["nc"]
        image = stack_bands([data / f"{b}.tif" for b in scene.bands], work / "nc.vrt",
                            band_names=list(scene.band_names), overwrite=True)
        print(f"NC Landsat, {args.rounds} rounds of {args.squares} squares of {args.size} px, seeds {args.seeds}")
        print(HEADER)
        rows = [r for seed in args.seeds for r in run_seed(seed, args, image, args.data / scene.folder, work)]
        summary = means(rows)
        print("\nmeans over seeds")
        print(HEADER)
        print_rows(summary)
        last = {r["strategy"]: r for r in summary if r["round"] == args.rounds}
        final = {(r["strategy"], r["seed"]): r["macro_f1"] for r in rows if r["round"] == args.rounds}
        if "suggest" in last:
            for other in [s for s in args.strategies if s != "suggest"]:
                wins = sum(final["suggest", s] > final[other, s] for s in args.seeds)
                print(f"after round {args.rounds}: suggest - {other} macro-F1 = "
                      f"{last['suggest']['macro_f1'] - last[other]['macro_f1']:+.3f} (mean), suggest ahead in "
                      f"{wins} of {len(args.seeds)} seeds")
        if args.plot:
            plot(summary, args.plot)
            print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
