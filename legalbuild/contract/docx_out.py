"""The audit as a Word document with a comment on each flagged clause (python-docx >= 1.2
`Document.add_comment`): for a DOCX input, the contract itself, each comment spanning the
paragraphs the clause came from; for a PDF or text input, a new document of the clauses under
their section headings. The comment holds the risk, then each finding's title, rule, why, fix
and suggested clause."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from legalbuild.contract.docx_in import open_docx
from legalbuild.contract.inputs import need
from legalbuild.contract.record import comment_text, flagged

AUTHOR, INITIALS = "legalbuild audit", "LB"


def write_docx(record: dict[str, Any], path: Path, source_docx: bytes | None = None) -> int:
    """Write the commented document; returns the number of comments."""
    rows = [r for r in record["clauses"] if flagged(r)]
    if source_docx is not None:
        document = open_docx(source_docx, record["document"]["name"])
        paragraphs = document.paragraphs
        for row in rows:
            loc = row["location"]
            runs = [run for p in paragraphs[loc["first"] : loc["last"] + 1] for run in _runs(p)]
            if not runs:  # text only in fields or the like: anchor on an empty run
                runs = [paragraphs[loc["first"]].add_run("")]
            document.add_comment(runs, comment_text(row), AUTHOR, INITIALS)
    else:
        document = _clauses_document(record)
    document.save(str(path))
    return len(rows)


def _runs(paragraph) -> list[Any]:
    """The paragraph's runs, those inside hyperlinks included, in order."""
    from docx.text.hyperlink import Hyperlink

    out = []
    for item in paragraph.iter_inner_content():
        out += item.runs if isinstance(item, Hyperlink) else [item]
    return out


def _clauses_document(record: dict[str, Any]):
    docx = need("docx", "python-docx")

    document = docx.Document()
    document.add_heading(f"Audit of {record['document']['name']}", level=0)
    document.add_paragraph(
        f"{len(record['clauses'])} clauses reviewed by {record['model']}; each flagged clause "
        "carries a comment. Locations refer to the original document."
    )
    heading = None
    for row in record["clauses"]:
        if row["heading"] and row["heading"] != heading:
            heading = row["heading"]
            document.add_heading(heading, level=1)
        paragraph = document.add_paragraph()
        run = paragraph.add_run(row["text"])
        where = row["location"]
        paragraph.add_run(f"  [{where['unit']} {where['first']}]").italic = True
        if flagged(row):
            document.add_comment(run, comment_text(row), AUTHOR, INITIALS)
    return document
