"""One writer of prediction files: every input gets its own name, so two inputs with the same
stem (``a/x.jpg``, ``b/x.jpg``, ``x.png``) never overwrite each other's outputs."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medlite.runs import atomic_target, make_output_dir, write_csv_atomic

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
INDEX_FILE = "predictions.csv"


def _safe(text: str) -> str:
    cleaned = _UNSAFE.sub("_", text).strip("._")
    return cleaned or "input"


def unique_names(sources: Sequence[str]) -> list[str]:
    """A distinct, filesystem-safe output name for every input source, in order.

    A file's name is its stem when no other input shares it; otherwise the stems are
    prefixed with as many parent folders as it takes to tell them apart (``a_x``, ``b_x``),
    then the extension is added (``x_jpg``, ``x_png``), and a number as the last resort.
    Inputs that are not files (arrays) are named ``input-<n>``.
    """
    paths = [Path(s) if s and not s.startswith("<") else None for s in sources]
    names = [_safe(p.stem) if p is not None else f"input-{i + 1}" for i, p in enumerate(paths)]
    depth = 0
    while True:
        counts = Counter(names)
        clashing = [i for i, n in enumerate(names) if counts[n] > 1]
        if not clashing:
            return names
        depth += 1
        for i in clashing:
            path = paths[i]
            if path is None:
                continue
            parents = path.parent.parts[-depth:] if depth <= len(path.parent.parts) else \
                path.parent.parts
            stem = "_".join([*parents, path.stem])
            if depth > len(path.parent.parts) and path.suffix:
                stem = f"{stem}_{path.suffix.lstrip('.')}"
            names[i] = _safe(stem)
        if depth > 64:
            break
    seen: Counter = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


class OutputWriter:
    """Writes the files of a prediction folder, which it creates and marks as medlite's.

    ``path(name, suffix)`` is where an input's file goes; :meth:`write_index` records, for
    every input, its source and the files written for it (``predictions.csv``), plus any
    summary columns the task gives.
    """

    def __init__(self, out_dir: Path, *, overwrite: bool = False):
        self.out_dir = make_output_dir(Path(out_dir), "predictions", overwrite=overwrite)
        self.rows: list[dict] = []

    def path(self, name: str, suffix: str) -> Path:
        return self.out_dir / f"{name}{suffix}"

    def save_png(self, pixels, name: str, suffix: str) -> Path:
        from PIL import Image

        target = self.path(name, suffix)
        with atomic_target(target) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
        return target

    def save_csv(self, table: pd.DataFrame, name: str, suffix: str) -> Path:
        return write_csv_atomic(table, self.path(name, suffix))

    def record(self, source: str, name: str, files: Sequence[Path], **summary) -> None:
        self.rows.append({"input": source, "name": name,
                          "files": ";".join(Path(f).name for f in files), **summary})

    def write_index(self, table: pd.DataFrame | None = None) -> Path:
        """``predictions.csv``: the recorded rows, or ``table`` when the task builds one."""
        frame = table if table is not None else pd.DataFrame(self.rows)
        return write_csv_atomic(frame, self.out_dir / INDEX_FILE)
