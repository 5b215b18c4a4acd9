"""Columnar sources: Parquet files and `datasets` save_to_disk folders (pyarrow and datasets are
imported only here, inside the functions). Rows come out in file order as `Record`s; a damaged page
cannot be skipped row by row, so it raises a DataError naming the rows it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from legalbuild.data.records import Record, SourceReader
from legalbuild.errors import DataError
from legalbuild.files import display_path


# --------------------------------------------------------------------------------------- Parquet
def open_parquet(path: Path) -> SourceReader:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        columns = list(pf.schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for truncated or foreign files
        raise DataError(f"{display_path(path)}: not a readable Parquet file: {exc}") from None
    return SourceReader(path, "parquet", columns, _read_parquet(path, pf))


def _read_parquet(path: Path, pf: Any) -> Iterator[Record]:
    shown = display_path(path)
    index = 0
    for group in range(pf.num_row_groups):  # group by group, so an error names its rows
        rows_in_group = pf.metadata.row_group(group).num_rows
        where = f"{shown} rows {index}-{index + rows_in_group - 1} (row group {group})"
        batches = pf.iter_batches(batch_size=4096, row_groups=[group])
        while (rows := _next_rows(batches, where)) is not None:
            for row in rows:
                yield Record(f"{shown} row {index}", index, None, row, row)
                index += 1


def _next_rows(batches: Iterator[Any], where: str) -> list[dict] | None:
    """The next Arrow batch as Python rows (None at the end); damaged pages raise DataError."""
    try:
        batch = next(batches, None)
        return None if batch is None else batch.to_pylist()
    except Exception as exc:  # pyarrow: OSError/ArrowInvalid for corrupt pages or compression
        raise DataError(
            f"{where}: unreadable (damaged file?): {exc}",
            hint="rows of a damaged columnar file cannot be skipped one by one; re-export the file",
        ) from None


# ------------------------------------------------------------------- datasets save_to_disk folder
def open_hf_disk(path: Path) -> SourceReader:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # FileNotFoundError for a plain folder, others for damaged ones
        raise DataError(
            f"{display_path(path)}: not a `datasets` save_to_disk folder: {exc}",
            hint="write it with Dataset.save_to_disk(folder), or point at a .jsonl/.csv/.parquet file",
        ) from None
    # A DatasetDict is read split by split in name order; normalize makes its own train/val split.
    splits = [(None, loaded)] if isinstance(loaded, datasets.Dataset) else sorted(loaded.items())
    columns = sorted({c for _, ds in splits for c in ds.column_names})
    return SourceReader(path, "hf_disk", columns, _read_hf_splits(path, splits))


def _read_hf_splits(path: Path, splits: list[tuple[str | None, Any]]) -> Iterator[Record]:
    shown = display_path(path)
    index = 0
    for split_name, ds in splits:
        label = shown if split_name is None else f"{shown}[{split_name}]"
        table = ds.with_format("arrow")
        slices = (table[start : start + 4096] for start in range(0, len(ds), 4096))
        start = 0
        while (rows := _next_rows(slices, f"{label} row {start}")) is not None:
            for offset, row in enumerate(rows):
                yield Record(f"{label} row {start + offset}", index, None, row, row)
                index += 1
            start += len(rows)
