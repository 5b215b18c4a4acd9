"""The review's downloads, written from the audit record and the decisions (decisions.py
`reviewed_record`) with `legalbuild audit`'s writers: the DOCX with a comment on every clause
whose findings were kept and the accepted fixes as tracked changes (contract/docx_out.py), the
HTML report (contract/html.py), the JSON record (contract/record.py; the audit schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from legalbuild.files import write_replacing
from legalbuild.review.decisions import reviewed_record
from legalbuild.review.store import Review
from legalbuild.review.uploads import Refused

AUTHOR = "legalbuild review"
KINDS = {
    "reviewed.docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "report.html": "text/html; charset=utf-8",
    "record.json": "application/json",
}


def write_download(review: Review, name: str, source_docx: bytes | None) -> tuple[Path, str]:
    """(the file written under the review's out/, the name to save it as); Refused (404,
    409) for an unknown download or an audit that has not finished."""
    from legalbuild.contract.docx_out import write_docx
    from legalbuild.contract.html import write_html
    from legalbuild.contract.record import write_json

    if name not in KINDS:
        raise Refused(f"no download named {name!r}", status=404)
    record: dict[str, Any] | None = review.record
    if record is None or review.meta.get("status") in ("queued", "running"):
        raise Refused(
            "the audit has not finished: the downloads are written from the finished audit",
            hint="wait for the last clause (or resume an interrupted audit), then download",
            status=409,
        )
    reviewed, fixes = reviewed_record(record, review.decisions)
    path = review.out_dir / name
    if name == "reviewed.docx":
        write_replacing(path, lambda p: write_docx(reviewed, p, source_docx, fixes, AUTHOR))
    elif name == "report.html":
        write_replacing(path, lambda p: write_html(reviewed, p))
    else:
        write_replacing(path, lambda p: write_json(reviewed, p))
    stem = Path(review.meta["file"]).stem
    return path, f"{stem}-{name}"
