"""`sparsecover report`: one self-contained HTML file about a run (images embedded, nothing fetched).

Sections: data summary, settings, training curves and the LR range test, validation per-class table
and confusion matrix, image | ground truth | prediction panel on validation chips, and, when given,
the classified map with its legend and its evaluation against a reference, and the uncertainty map
with the squares `suggest` chose.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .errors import SparsecoverWarning, warn
from .runfolder import RunFolder


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_section(title: str, metrics: dict, confusion_png: Path) -> str:
    headline = (f"<p class='headline'>overall accuracy <b>{metrics['overall_accuracy']:.3f}</b> · macro-F1 "
                f"<b>{metrics['macro_f1']:.3f}</b> · kappa <b>{metrics['kappa']:.3f}</b> · mean IoU "
                f"<b>{metrics['mean_iou']:.3f}</b> · {metrics['pixels']:,} reference pixels</p>")
    rows = [[c["class"], c["precision"], c["recall"], c["f1"], c["iou"], c["support"]] for c in metrics["per_class"]]
    table = _table(["class", "precision (user's)", "recall (producer's)", "F1", "IoU", "support"], rows)
    parts = [f"<h2>{html.escape(title)}</h2>", headline, table, _img(confusion_png, "confusion matrix")]
    if metrics.get("area_estimates"):
        area_rows = [[a["class"], a["mapped_area"] / 1e6, a["estimated_area"] / 1e6, a["ci95"] / 1e6]
                     for a in metrics["area_estimates"]]
        parts.append("<h3>Area estimates (Olofsson et al. 2014, 95 % CI), km²</h3>")
        parts.append(_table(["class", "mapped", "estimated", "± 95 % CI"], area_rows))
    return "\n".join(parts)


def _vector_section(vector: Path) -> str:
    from .polygonize import summarize_polygons

    rows, area_field = summarize_polygons(vector)
    unit = "ha" if area_field == "area_ha" else area_field.removeprefix("area_")
    total = sum(r["area"] for r in rows) or 1.0
    table = _table(["value", "class", "polygons", f"area ({unit})", "share"],
                   [[r["value"], r["name"], r["polygons"], r["area"], r["area"] / total] for r in rows])
    count = sum(r["polygons"] for r in rows)
    return (f"<h2>Vector map</h2><p><code>{html.escape(str(vector))}</code>: {count:,} polygons "
            "(opens in QGIS in the map's colours).</p>" + table)


def _settings_section(config: dict) -> str:
    """The training settings that differ from `train`'s defaults (a reader wants what was chosen)."""
    from .train import TrainConfig

    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    shown = lambda v: f"{v:.4g}" if isinstance(v, float) else json.dumps(v)  # noqa: E731
    rows = [[k, shown(v), shown(defaults[k]) if k in defaults else "–"] for k, v in sorted(config.items())
            if k not in defaults or v != defaults[k]]
    return ("<h2>Settings</h2><p>What differs from the defaults of <code>sparsecover train</code>; every other "
            "setting is at its default (all are in the run's config.json).</p>"
            + _table(["setting", "value", "default"], rows))


def _imagery(dataset, classified: str | Path) -> Path | None:
    """The raster the chips came from, where it is on the map's grid (to show beside it)."""
    import rasterio

    with rasterio.open(classified) as src:
        grid = (src.crs, src.transform, src.shape)
    for source in (dataset.sources if dataset is not None else []):
        if source.exists():
            with rasterio.open(source) as img:
                if (img.crs, img.transform, img.shape) == grid:
                    return source
    return None


def build_report(run: str | Path, out: str | Path, classified: str | Path | None = None,
                 evaluation: str | Path | list[str | Path] | None = None, show_rows: int = 4,
                 uncertainty: str | Path | None = None, suggestions: str | Path | None = None,
                 vector: str | Path | None = None) -> Path:
    """Write the HTML report for training run ``run`` (plus a map beside its imagery, its
    evaluations (folders written by `evaluate`: against a reference map, points, ...), its
    uncertainty, the places `suggest` chose and the vector map's polygons and class areas, if given)."""
    from .combine import open_chip_datasets
    from .evaluate import evaluate_run
    from .plots import plot_confusion, plot_history, plot_map, plot_uncertainty, show_results
    from .predict import load_model
    from .train import TrainConfig, prepare

    folder, out = RunFolder(Path(run)), Path(out)
    run = folder.root
    config = folder.settings()
    sections = []
    incomplete = folder.unfinished()
    if incomplete is not None:  # a killed run: say so first, not only by what is missing below
        warn(incomplete)
        sections.append(f"<p class='warning'><b>Incomplete run.</b> {html.escape(incomplete)}</p>")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        roots = config["dataset"]
        dataset = open_chip_datasets(roots) if all(Path(r).exists() for r in roots) else None
        if dataset is not None:
            band_rows = [[b.name, b.dtype, s["min"], s["p1"], s["mean"], s["std"], s["p99"], s["max"]]
                         for b, s in zip(dataset.bands, dataset.statistics)]
            class_rows = [[c.value, c.name, c.color, dataset.class_pixel_counts.get(c.value, 0)] for c in dataset.classes]
            sections.append(
                "<h2>Data</h2>"
                f"<p>{len(dataset)} chips of {dataset.tile_size} px from <code>{html.escape(', '.join(roots))}</code>"
                f" ({dataset.kind}); {len(dataset.groups)} spatial groups (polygons / regions) for the split.</p>"
                + _table(["band", "dtype", "min", "p1", "mean", "std", "p99", "max"], band_rows)
                + _table(["value", "class", "colour", "labelled pixels"], class_rows)
            )
        sections.append(_settings_section(config))
        history, refit = folder.history(), folder.refit.history()
        if history:
            plot_history(history, tmp / "history.png")
            parts = ["<h2>Training</h2>", _img(tmp / "history.png", "training curves")]
            if folder.lr_plot.exists():
                parts.append(_img(folder.lr_plot, "LR range test"))
            if refit:
                parts.append(f"<p>Then refit on every polygon, the held-out ones included: {len(refit)} epochs, "
                             f"final training loss {float(refit[-1]['train_loss']):.3f}. The map's model is the "
                             "refit.</p>")
            sections.append("\n".join(parts))
        if folder.metrics.exists():
            metrics = evaluate_run(run, tmp / "validation")
            sections.append(_metrics_section("Validation (held-out polygons" + (", before the refit on every polygon)"
                                                                                 if refit else ")"),
                                             metrics, tmp / "validation" / "confusion_matrix.png"))
            if dataset is not None:
                saved = {k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__}
                with warnings.catch_warnings():  # what `train` already warned about (a class it cannot validate)
                    warnings.simplefilter("ignore", SparsecoverWarning)
                    prepared = prepare(dataset, TrainConfig(**{**saved, "quiet": True}))
                if prepared.valid is not None:
                    chosen = prepared.valid.indices[:: max(1, len(prepared.valid.indices) // show_rows)][:show_rows]
                    show_results(dataset, load_model(run), chosen, tmp / "results.png")
                    title = ("Held-out chips: image | ground truth | prediction of the packaged model, refit on "
                             "these polygons too" if refit else "Validation chips: image | ground truth | prediction")
                    sections.append(f"<h2>{title}</h2>" + _img(tmp / "results.png", "show_results"))
        if classified is not None:
            plot_map(classified, tmp / "map.png", image=_imagery(dataset, classified))
            sections.append(f"<h2>Map</h2><p><code>{html.escape(str(classified))}</code></p>"
                            + _img(tmp / "map.png", "classified map"))
        if vector is not None:
            sections.append(_vector_section(Path(vector)))
        if uncertainty is not None or suggestions is not None:
            plot_uncertainty(uncertainty, suggestions, tmp / "uncertainty.png")
            named = ", ".join(f"<code>{html.escape(str(p))}</code>" for p in (uncertainty, suggestions) if p)
            sections.append(f"<h2>Where to label next</h2><p>{named}</p>"
                            + _img(tmp / "uncertainty.png", "uncertainty and suggested squares"))
        evaluations = [evaluation] if isinstance(evaluation, (str, Path)) else list(evaluation or [])
        for index, folder in enumerate(map(Path, evaluations)):
            metrics = json.loads((folder / "metrics.json").read_text())
            picture = tmp / f"eval_cm_{index}.png"
            plot_confusion(np.asarray(metrics["confusion_matrix"]), [c["class"] for c in metrics["per_class"]], picture)
            title = f"Map accuracy against {Path(metrics['reference']).name} ({metrics['reference_kind']})"
            if metrics.get("excluded"):
                title += f", excluding {Path(metrics['excluded']).name}"
            section = _metrics_section(title, metrics, picture)
            if metrics.get("points"):
                p = metrics["points"]
                section += (f"<p>{p['used']:,} of {p['total']:,} points scored; {p['outside_or_nodata']:,} fall outside "
                            "the map or on nodata.</p>")
            sections.append(section)
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        document = _TEMPLATE.format(title=html.escape(f"sparsecover report: {run.name}"), created=created,
                                    version=__version__, body="\n".join(f"<section>{s}</section>" for s in sections))
    out.write_text(document, encoding="utf-8")
    return out


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: .8em 0; font-size: .9em; }}
th, td {{ border: 1px solid #ddd; padding: .25em .6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; display: block; margin: .6em 0; }} .headline {{ font-size: 1.05em; }}
code {{ background: #f5f5f5; padding: 0 .2em; }}
.warning {{ background: #fff3cd; border: 1px solid #e0b84c; padding: .5em .8em; }}
</style></head>
<body><h1>{title}</h1><p>made {created} by sparsecover {version}</p>
{body}
</body></html>
"""
