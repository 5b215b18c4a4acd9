"""Data files in, one clean train/validation split out: the library of the normalize stage.

    files    which paths may be read at all (regular files only), UTF-8 decoding with a location
    readers  every source format (JSON Lines, JSON array, CSV; columnar: Parquet, `datasets`
             folders) as positioned records; `iter_jsonl` is the project's one JSON Lines reader
    rows     a record mapped onto the canonical schema (instruction, output, group, meta), or a bad row
    clean    text cleaning, comparison folding, length filters, dedup
    split    the hash split into train/validation and the row ids
    stats    counts, warnings and stats.json
    output   train/val/rejects JSON Lines writers
    normalize  the pipeline over those parts (`normalize_sources`)

`legalbuild.stages.normalize.run` only gathers the sources and calls `normalize_sources`.
Nothing here imports pyarrow or datasets at module level.
"""
