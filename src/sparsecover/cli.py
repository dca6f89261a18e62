"""The `sparsecover` command: thin wrappers that parse options and call one public function each.

A :class:`SparsecoverError` is printed as one red line and exits with status 2, and so is what the
machine refuses (a location that may not be written, a read-only file system, a full disk);
warnings print as one yellow line each. Tracebacks are only for bugs.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import SparsecoverError, SparsecoverWarning, refused_write
from .trainconfig import TrainConfig

TRAIN = TrainConfig()  # `train`'s and `lr-find`'s option defaults are the training settings' own

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False, soft_wrap=True)  # paths stay on one line (copy-paste) when piped


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    label = "warning:" if issubclass(category, SparsecoverWarning) else f"warning ({category.__name__}):"
    err_console.print(Text.assemble((label, "yellow"), " ", str(message)), soft_wrap=True)


def _error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    sys.exit(2)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SparsecoverError as exc:
            _error(str(exc))
        except OSError as exc:
            message = refused_write(exc)
            if message is None:
                raise
            _error(message)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sparsecover")
def cli() -> None:
    """Land-cover maps from multispectral imagery and a handful of labelled polygons.

    Pipeline: stack -> export -> train -> classify -> evaluate. Each stage writes an artifact
    you can open in QGIS, a text editor or a browser.
    """
    warnings.showwarning = _show_warning


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",")] if text else None


# options several commands share, defined once (as rasterio's `rio` does)
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace the outputs if they exist.")


def quiet_option(silenced: str = "No progress bars.") -> Callable:
    """-q/--quiet; ``silenced`` says what it leaves out in this command."""
    return click.option("-q", "--quiet", is_flag=True, help=silenced)


@cli.command()
@click.argument("bands", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output raster: .vrt (default, no pixels copied) or .tif with --cog.")
@click.option("--assets", help="With a STAC item: the assets to stack, in order (keys or common names, e.g. "
              "B02,B03,B04,B08 or blue,green,red,nir).")
@click.option("--band-names", help="Comma-separated names, one per output band (e.g. blue,green,red).")
@click.option("--resample", help="Align files on another grid to the first file's grid with this "
              "method (nearest, bilinear, cubic, average, ...).")
@click.option("--cog", is_flag=True, help="Write a tiled, compressed Cloud-Optimized GeoTIFF instead of a VRT.")
@overwrite_option
def stack(bands, output, assets, band_names, resample, cog, overwrite) -> None:
    """Stack one-file-per-band rasters (Landsat, Sentinel-2), or the assets of a STAC item (ITEM.json,
    a file or URL), into one multiband raster."""
    from .stack import stack_bands

    path = stack_bands(list(bands), output, _split(band_names), resample, cog, overwrite, _split(assets))
    out_console.print(f"wrote {path}")


@cli.command()
@click.argument("rasters", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Labelled polygons or points (GPKG, SHP, GeoJSON, FlatGeobuf, GeoParquet; a point labels "
              "the pixel under it) or a classified raster (0 = unlabelled). Repeat it to combine vector files, "
              "e.g. the squares from `suggest`.")
@click.option("--class-field", help="Integer class field of the polygons (classes 1..255).")
@click.option("--class-name-field", help="Field holding each class's name.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output chip dataset folder.")
@click.option("--tile-size", default=256, show_default=True, help="Chip width and height in pixels.")
@click.option("--stride", default=64, show_default=True, help="Step between chips in pixels.")
@click.option("--all-tiles", is_flag=True, help="Also write chips without labels (for semi-supervised use).")
@click.option("--class-names", help="Names as VALUE=NAME,... (default: the name field, or what a label raster "
              "carries: category names, attribute table).")
@click.option("--class-colors", help="Colours as VALUE=#rrggbb,... (default: a label raster's colour table, "
              "else a land-cover palette).")
@click.option("--workers", type=int, help="Threads for reading and writing (default: cores, at most 4).")
@overwrite_option
@quiet_option("No progress bars; one summary line instead of the tables.")
def export(rasters, labels, class_field, class_name_field, out, tile_size, stride, all_tiles,
           class_names, class_colors, workers, overwrite, quiet) -> None:
    """Export image and label chips (a chip dataset) from raster(s) and labels."""
    from .chips import open_chip_dataset
    from .classes import parse_color_pairs, parse_name_pairs
    from .export import export_training_data

    path = export_training_data(
        list(rasters), list(labels), out, class_field=class_field, class_name_field=class_name_field,
        tile_size=tile_size, stride=stride, all_tiles=all_tiles, class_names=parse_name_pairs(class_names),
        class_colors=parse_color_pairs(class_colors), overwrite=overwrite, workers=workers,
        progress=not quiet,
    )
    _print_dataset(open_chip_dataset(path), summary_only=quiet)


def _train_options(func):
    """Options shared by `train` and `lr-find` (they must prepare data the same way)."""
    options = [
        click.option("--backbone", default=TRAIN.backbone, show_default=True, help="Encoder (any segmentation-models-pytorch encoder)."),
        click.option("--architecture", default=TRAIN.architecture, show_default=True, help="unet, unetplusplus, fpn or deeplabv3plus."),
        click.option("--encoder-depth", default=TRAIN.encoder_depth, show_default=True, type=click.IntRange(3, 5),
                     help="Encoder stages kept (3-5): fewer = smaller receptive field and model, steadier from few polygons."),
        click.option("--patch-size", default=TRAIN.patch_size or 0, show_default=True, type=click.IntRange(0),
                     help="Train on random patches of this size (a multiple of 32) cut from larger chips; 0 = whole chips."),
        click.option("--spectral/--no-spectral", default=TRAIN.spectral, show_default=True,
                     help="Pool the network with a per-pixel model of the same labelled pixels (like a random "
                          "forest's), so the map holds where the scene looks unlike the polygons' surroundings."),
        click.option("--unlabelled-weight", default=TRAIN.unlabelled_weight, show_default=True, type=click.FloatRange(0),
                     help="Weight of the pseudo-label loss on unlabelled pixels (semi-supervised); 0 = off."),
        click.option("--pseudo-threshold", default=TRAIN.pseudo_threshold, show_default=True, type=click.FloatRange(0, 1),
                     help="Confidence a prediction needs to become a pseudo-label."),
        click.option("--batch-size", default=TRAIN.batch_size, show_default=True),
        click.option("--val-fraction", default=TRAIN.val_fraction, show_default=True, help="Share of spatial groups (polygons) per class held out."),
        click.option("--ignore-classes", help="Class values to leave out of loss and metrics, e.g. 0,7 (0 always is)."),
        click.option("--class-weights", type=click.Choice(["auto", "none"]), default=TRAIN.class_weights, show_default=True,
                     help="auto: weight the loss by inverse class pixel frequency."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=TRAIN.device, show_default=True),
        click.option("--precision", type=click.Choice(["32", "16-mixed", "bf16-mixed"]), default=TRAIN.precision,
                     show_default=True),
        click.option("--weights", help="none (default), imagenet (downloads once), or a run folder / .sparsecover package / .safetensors / .pt to fine-tune."),
        click.option("--bands", help="Bands to use, by name or 1-based number, e.g. red,green,blue,nir."),
        click.option("--imagery-type", type=click.Choice(["naip", "landsat8", "sentinel2", "ms", "multispectral"]),
                     help="arcgis.learn-style preset naming the bands."),
        click.option("--seed", default=TRAIN.seed, show_default=True),
        click.option("--workers", default=TRAIN.workers, show_default=True, help="DataLoader worker processes."),
        quiet_option("No progress bars or epoch table."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(**kw):
    ignore = [int(v) for v in _split(kw.pop("ignore_classes")) or [] if v != "0"]
    bands = _split(kw.pop("bands"))
    return TrainConfig(ignore_classes=ignore, bands=bands, **kw)


@cli.command()
@click.argument("chips", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--epochs", default=TRAIN.epochs, show_default=True)
@click.option("--lr", default=str(TRAIN.lr), show_default=True,
              help="Peak learning rate, or auto to run the LR finder first (its suggestion capped at 0.003).")
@click.option("--early-stopping", type=int, help="Stop after N epochs without a better validation loss.")
@click.option("--devices", default=TRAIN.devices, show_default=True, help="Devices (GPUs or CPU processes) per node; >1 uses DDP.")
@click.option("--num-nodes", default=TRAIN.num_nodes, show_default=True, help="Machines for multi-node DDP.")
@click.option("--strategy", default=TRAIN.strategy, show_default=True, help="Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out with the same settings.")
@click.option("--onnx", is_flag=True, help="Also put model.onnx (and an Esri .emd) into the model package.")
@click.option("--keep-checkpoints", is_flag=True,
              help="Keep checkpoints/ (last and best epoch, with optimizer state) once the run has finished.")
@click.option("--members", default=TRAIN.members, show_default=True, type=click.IntRange(1),
              help="Train this many networks from different random starts and package their average "
                   "(an ensemble): steadier maps from few polygons; costs this many times the training "
                   "and classify time.")
@click.option("--refit/--no-refit", default=TRAIN.refit, show_default=True,
              help="After the validated fit (whose metrics are reported), train again on every polygon, the "
                   "held-out ones too, for the same epochs; the package holds the refit. Doubles training time.")
@_train_options
def train(chips, out, epochs, lr, early_stopping, devices, num_nodes, strategy, resume, onnx, keep_checkpoints,
          refit, **kw) -> None:
    """Train a segmentation model (U-Net, ResNet34 by default) on one or more chip datasets."""
    from .runfolder import RunFolder

    RunFolder(out).check(resume)  # at once: the training stack takes seconds to import
    from .train import train as run_training

    try:
        learning_rate = None if lr == "auto" else float(lr)
    except ValueError:
        raise SparsecoverError(f"--lr must be auto or a number, got {lr!r}") from None
    config = _config(epochs=epochs, lr=learning_rate, early_stopping=early_stopping, devices=devices,
                     num_nodes=num_nodes, strategy=strategy, resume=resume, onnx=onnx,
                     keep_checkpoints=keep_checkpoints, refit=refit, **kw)
    run = RunFolder(run_training(list(chips), out, config))
    summary = run.validation_metrics()
    if summary is not None:
        before = " before the refit on every polygon" if run.refit.history() else ""
        out_console.print(f"validation (held-out polygons{before}): accuracy {summary['overall_accuracy']:.3f}, "
                          f"macro-F1 {summary['macro_f1']:.3f}, kappa {summary['kappa']:.3f}")
    out_console.print(f"run folder: {run.root}  (model package: {run.package})")


@cli.command("lr-find")
@click.argument("chips", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", default="lr_find.png", show_default=True, type=click.Path(path_type=Path), help="Plot of the LR range test.")
@_train_options
def lr_find(chips, out, **kw) -> None:
    """Run the LR range test and print the suggested learning rate."""
    from .staging import check_output
    from .train import find_lr, prepare

    check_output(out, overwrite=True)  # before the finder's minutes, not after them
    config = _config(**kw)
    suggestion = find_lr(prepare(list(chips), config), config, out)
    out_console.print(f"suggested learning rate: {suggestion:.3g}  (plot: {out})")


@cli.command()
@click.argument("rasters", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Classified GeoTIFF (COG) to write; with several rasters, a folder for one <name>.tif each.")
@click.option("--tile-size", default=1024, show_default=True,
              help="Largest input tile side (multiple of 32); tiles are sized per raster to compute the fewest pixels.")
@click.option("--padding", default=32, show_default=True,
              help="Least context (pixels) around each tile's kept core, inside the raster.")
@click.option("--batch-size", type=int, default=None,
              help="Tiles per forward pass [default: 8 on CUDA (halved if the GPU runs out of memory), "
                   "else 1; the ONNX engine runs on the CPU].")
@click.option("--tta", type=click.Choice(["none", "flip", "all"]), default="flip", show_default=True, is_flag=False,
              flag_value="all", help="Test-time augmentation: average the tile and its mirror image (2 passes), "
                                     "all 8 flips/rotations (8 passes; --tta alone), or none (1 pass, fastest).")
@click.option("--confidence", type=click.Path(path_type=Path), help="Also write the top-class probability here.")
@click.option("--probabilities", type=click.Path(path_type=Path), help="Also write per-class probabilities here.")
@click.option("--uncertainty", type=click.Path(path_type=Path),
              help="Also write each pixel's uncertainty here (1 - margin of the top two probabilities; "
                   "for an ensemble, its members' disagreement).")
@click.option("--vector", type=click.Path(path_type=Path),
              help="Also write the map as polygons in this GeoPackage (see `sparsecover vectorize`).")
@click.option("--min-area", help="With --vector: minimum mapping unit, e.g. 0.5ha or 12px.")
@click.option("--class-prior", type=click.Choice(["labels", "balanced"]), default="labels", show_default=True,
              help="Decide under the class frequencies of the training labels, or as if all classes were equally "
                   "common (more of the rare classes).")
@click.option("--aoi", type=click.Path(path_type=Path), help="Polygons: classify only inside (nodata outside).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Network arithmetic: auto is bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), else fp32.")
@click.option("--workers", type=int, help="Start a local Dask cluster with N worker processes.")
@click.option("--dask-scheduler", help="Address of a running Dask scheduler (tcp://host:8786).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its finished blocks.")
@overwrite_option
@quiet_option("No progress bar.")
def classify(rasters, out, tile_size, padding, batch_size, tta, confidence, probabilities, uncertainty, vector,
             min_area, class_prior, aoi, device, engine, precision, workers, dask_scheduler, resume, overwrite,
             quiet) -> None:
    """Classify RASTER [RASTER...] MODEL: each raster with a trained model (.sparsecover package or run folder).

    Several rasters give one output each, in the --out folder (and the --confidence, --uncertainty,
    --probabilities, --vector folders), named after the raster. To get one map of a mosaic, classify a VRT of the tiles instead.
    """
    if len(rasters) < 2:
        raise SparsecoverError("classify needs RASTER [RASTER...] MODEL: a raster and a model package or run folder")
    *inputs, model = rasters
    from .predict import refuse_unreadable

    refuse_unreadable(inputs, model)
    from .classify import classify_rasters

    written = classify_rasters(inputs, model, out, confidence=confidence, uncertainty=uncertainty,
                               probabilities=probabilities, vector=vector, tile_size=tile_size, padding=padding,
                               batch_size=batch_size, tta=tta, class_prior=class_prior, aoi=aoi, device=device,
                               engine=engine, workers=workers, dask_scheduler=dask_scheduler, resume=resume,
                               overwrite=overwrite, progress=not quiet, min_area=min_area, precision=precision)
    for paths in written:
        out_console.print("wrote " + " and ".join(str(p) for p in paths.values()))


@cli.command()
@click.argument("raster", type=click.Path(path_type=Path))
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="GeoPackage of squares to label.")
@click.option("--n", "n", default=30, show_default=True, help="How many squares.")
@click.option("--size", default=5, show_default=True, help="Side of each square in pixels.")
@click.option("--labels", type=click.Path(path_type=Path), help="Existing labels: no square inside or beside them.")
@click.option("--uncertainty", type=click.Path(path_type=Path), help="Also keep the uncertainty map (COG) here.")
@click.option("--class-field", help="Name of the empty class field [default: the training polygons' one].")
@click.option("--seed", default=0, show_default=True, help="Breaks ties between equally uncertain places.")
@click.option("--tile-size", default=1024, show_default=True, help="As for classify.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@overwrite_option
@quiet_option("No progress bar.")
def suggest(raster, model, out, n, size, labels, uncertainty, class_field, seed, tile_size, device, overwrite,
            quiet) -> None:
    """Where to label next: squares where MODEL is least sure on RASTER, spread out, every class covered.

    Open the GeoPackage in QGIS, fill in the class field of the squares you can tell, save, and
    export again with both label files (--labels first.gpkg --labels squares.gpkg).
    """
    from .predict import refuse_unreadable

    refuse_unreadable([raster], model)
    from .suggest import suggest_labels

    path = suggest_labels(raster, model, out, n=n, size=size, labels=labels, uncertainty=uncertainty,
                          class_field=class_field, seed=seed, tile_size=tile_size, device=device,
                          overwrite=overwrite, progress=not quiet)
    out_console.print(f"wrote {path}" + (f" and {uncertainty}" if uncertainty else ""))


@cli.command()
@click.argument("classified", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="GeoPackage of polygons (styled for QGIS).")
@click.option("--min-area", help="Minimum mapping unit: smaller patches first join the neighbour they share "
              "the longest border with (e.g. 0.5ha, or 12px).")
@click.option("--simplify", type=float, help="Simplify edges with this tolerance in map units; neighbours keep "
              "shared edges (no gaps or overlaps).")
@click.option("--classes", help="Only these class values, e.g. 3,5.")
@click.option("--layer", help="Layer name [default: the file's name].")
@overwrite_option
@quiet_option()
def vectorize(classified, out, min_area, simplify, classes, layer, overwrite, quiet) -> None:
    """Polygons of a class map: one per patch of connected pixels (sharing an edge) of one class, with
    class name, area and perimeter, in the map's colours when opened in QGIS."""
    from .polygonize import vectorize as run

    try:
        values = [int(v) for v in _split(classes)] if classes else None
    except ValueError:
        raise SparsecoverError(f"--classes {classes!r}: give class values, e.g. 3,5") from None
    path = run(classified, out, min_area=min_area, simplify=simplify, classes=values, layer=layer,
               overwrite=overwrite, progress=not quiet)
    out_console.print(f"wrote {path}")


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path),
              help="Reference raster (0 = none), polygons or points; without it TARGET is a run or package "
              "and its validation metrics are reported.")
@click.option("--class-field", help="Class field of reference polygons / points.")
@click.option("--exclude", type=click.Path(path_type=Path), help="Polygons whose pixels are not scored (training polygons).")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for metrics.json and the confusion matrix files.")
@quiet_option("No progress bar.")
def evaluate(target, reference, class_field, exclude, out, quiet) -> None:
    """Accuracy of a classified raster against a reference, or of a model on its validation split."""
    from .evaluate import evaluate_map, evaluate_run

    if reference is None:
        summary = evaluate_run(target, out)
    else:
        summary = evaluate_map(target, reference, out or target.with_suffix("").with_name(target.stem + "_evaluation"),
                               class_field=class_field, exclude=exclude, progress=not quiet)
    table = Table(title=f"overall accuracy {summary['overall_accuracy']:.3f} · macro-F1 {summary['macro_f1']:.3f}"
                        f" · kappa {summary['kappa']:.3f} · {summary['pixels']:,} pixels", title_justify="left")
    for col in ("class", "precision", "recall", "F1", "IoU", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in summary["per_class"]:
        table.add_row(c["class"], *(f"{c[k]:.3f}" if c[k] is not None else "–" for k in ("precision", "recall", "f1", "iou")),
                      f"{c['support']:,}")
    out_console.print(table)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--classified", type=click.Path(path_type=Path), help="Classified raster to preview.")
@click.option("--evaluation", multiple=True, type=click.Path(path_type=Path),
              help="Folder written by `evaluate` for that map; repeat it for several references (map, points).")
@click.option("--uncertainty", type=click.Path(path_type=Path), help="Uncertainty map (classify/suggest --uncertainty).")
@click.option("--suggestions", type=click.Path(path_type=Path), help="GeoPackage written by `suggest`.")
@click.option("--vector", type=click.Path(path_type=Path), help="Vector map written by `vectorize` (polygons, class areas).")
@click.option("--out", default="report.html", show_default=True, type=click.Path(path_type=Path))
def report(run, classified, evaluation, uncertainty, suggestions, vector, out) -> None:
    """One self-contained HTML report: data, training, validation, map and its accuracy."""
    from .report import build_report

    path = build_report(run, out, classified=classified, evaluation=list(evaluation), uncertainty=uncertainty,
                        suggestions=suggestions, vector=vector)
    out_console.print(f"wrote {path}")


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Package file (.sparsecover).")
@click.option("--onnx", is_flag=True, help="Include model.onnx and model.emd.")
@overwrite_option
def package(source, out, onnx, overwrite) -> None:
    """Write the one-file model package from a training run (or repackage a package)."""
    from .package import save_package

    out_console.print(f"wrote {save_package(source, out, onnx=onnx, overwrite=overwrite)}")


@cli.command("export-onnx")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="ONNX file (default: beside the model).")
@overwrite_option
def export_onnx_command(model, out, overwrite) -> None:
    """Export a model to ONNX (raw band values in, probabilities out) with Deepness metadata and an Esri .emd."""
    from .package import export_onnx

    path = export_onnx(model, out, overwrite=overwrite)
    out_console.print(f"wrote {path} and {path.with_suffix('.emd')}")


@cli.command()
@click.argument("raster", type=click.Path(path_type=Path))
@click.argument("model", type=click.Path(path_type=Path))
def check(raster, model) -> None:
    """Check a raster against a model's data contract (bands, dtype, value range, resolution, CRS)."""
    from .predict import check_raster

    notes = check_raster(raster, model)
    out_console.print(f"{raster}: {'fits the model' if not notes else f'usable, with {len(notes)} warning(s)'}")


def _print_map(path: Path) -> None:
    from .evaluate import map_classes

    rows, unit = map_classes(path)
    table = Table(title=f"classes of {path.name}", title_justify="left")
    for col in ("value", "name", "colour", "pixels", "share", *([f"area ({unit})"] if unit else [])):
        table.add_column(col, justify="right" if col not in ("name", "colour") else "left")
    for r in rows:
        colour = Text.assemble(("■ ", r["color"]), r["color"]) if r["color"] else Text("")
        area = [f"{r['area']:,.1f}"] if unit else []
        table.add_row(str(r["value"]), r["name"], colour, f"{r['pixels']:,}", f"{100 * r['share']:.1f} %", *area)
    out_console.print(table)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
def info(path: Path) -> None:
    """Describe a chip dataset (ours or an Esri Classified Tiles export), a model package, or a
    class map (classes, pixels, share and area)."""
    import zipfile

    if path.is_file() and not zipfile.is_zipfile(path):
        _print_map(path)
        return
    if path.is_file():
        from .modelfile import read_package
        from .package import describe_package

        meta, _ = read_package(path)  # every member verified: `info` is also how a copied package is checked
        for label, text in describe_package(meta):
            out_console.print(Text.assemble((f"{label:>15}: ", "bold"), text))
        classes = Table(title="classes", title_justify="left")
        for col in ("index", "value", "name", "colour"):
            classes.add_column(col)
        for c in meta["classes"]:
            classes.add_row(str(c["index"]), str(c["value"]), c["name"], Text.assemble(("■ ", c["color"]), c["color"]))
        out_console.print(classes)
        return
    from .chips import open_chip_dataset

    _print_dataset(open_chip_dataset(path))


@cli.command()
@click.option("--out", default="sparsecover-demo", show_default=True, type=click.Path(path_type=Path),
              help="Folder for every artifact of the demo.")
@click.option("--epochs", default=8, show_default=True, help="Training epochs.")
@click.option("--backbone", default="resnet18", show_default=True, help="Encoder for the demo model.")
@overwrite_option
@quiet_option()
def demo(out: Path, epochs: int, backbone: str, overwrite: bool, quiet: bool) -> None:
    """Run the pipeline on the built-in North Carolina Landsat scene and its 34 polygons."""
    from .demo import run_demo

    artifacts, scores = run_demo(out, overwrite=overwrite, progress=not quiet, epochs=epochs, backbone=backbone)
    for name, path in artifacts.items():
        out_console.print(f"{name:>22}: {path}")
    out_console.print(
        f"whole scene vs reference map, outside the training polygons ({scores['pixels']:,} pixels): "
        f"overall accuracy {scores['overall_accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}, "
        f"kappa {scores['kappa']:.3f}"
    )


def _print_dataset(ds, summary_only: bool = False) -> None:
    out_console.print(f"[bold]{ds.root}[/] ({ds.kind}): {len(ds)} chips of {ds.tile_size} px"
                      + (f", stride {ds.stride}" if ds.stride else ""))
    if summary_only:
        return
    if ds.resolution:
        out_console.print(f"resolution {ds.resolution[0]:g} x {ds.resolution[1]:g}, dtype {ds.dtype}")
    bands = Table(title="bands", title_justify="left")
    for col in ("band", "dtype", "nodata", "min", "p1", "mean", "std", "p99", "max"):
        bands.add_column(col, justify="left" if col == "band" else "right")
    for band, st in zip(ds.bands, ds.statistics):
        bands.add_row(band.name, band.dtype, str(band.nodata), *(f"{st[k]:.4g}" for k in
                      ("min", "p1", "mean", "std", "p99", "max")))
    out_console.print(bands)
    classes = Table(title="classes", title_justify="left")
    for col in ("value", "name", "colour", "labelled pixels"):
        classes.add_column(col, justify="right" if col != "name" else "left")
    for c in ds.classes:
        classes.add_row(str(c.value), c.name, f"[{c.color}]■[/] {c.color}",
                        f"{ds.class_pixel_counts.get(c.value, 0):,}")
    out_console.print(classes)
    if ds.group_table:
        out_console.print(f"{len(ds.group_table)} spatial groups (polygons / label regions) for the split")


def main() -> None:
    cli(prog_name="sparsecover")


if __name__ == "__main__":
    main()
