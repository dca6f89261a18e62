"""Progress bars shared by every stage (rich, on stderr, silent when disabled)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

_console = Console(stderr=True)


def track(items: Iterable[T], total: int, description: str, enabled: bool = True,
          weights: list[float] | None = None, unit: str | None = None) -> Iterator[T]:
    """Yield ``items`` while drawing a bar with count, elapsed time and ETA.

    With ``weights`` (one per item, e.g. megapixels) the bar advances by weight and shows the rate
    in ``unit`` per second.
    """
    if not enabled:
        yield from items
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn()]
    if weights is not None:
        columns.append(TextColumn(f"{{task.completed:.1f}}/{{task.total:.1f}} {unit}"))
        columns.append(TextColumn(f"{{task.fields[rate]}} {unit}/s"))
    else:
        columns.append(MofNCompleteColumn())
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=_console, transient=False) as bar:
        task = bar.add_task(description, total=sum(weights) if weights is not None else total, rate="–")
        for i, item in enumerate(items):
            yield item
            bar.advance(task, weights[i] if weights is not None else 1)
            if weights is not None:
                elapsed = bar.tasks[0].elapsed or 0
                if elapsed > 0:
                    bar.update(task, rate=f"{bar.tasks[0].completed / elapsed:.2f}")
