"""The audit as a Word document with a comment on each flagged clause (python-docx >= 1.2
`Document.add_comment`): for a DOCX input, the contract itself, each comment spanning the
paragraphs the clause came from; for a PDF or text input, a new document of the clauses under
their section headings. The comment holds the risk, then each finding's title, rule, why, fix
and suggested clause.

`fixes` (clause index -> new text, from the review page's accepted findings) become Word tracked
changes: the clause's runs move into `w:del` (their `w:t` become `w:delText`) and the new text
follows in a `w:ins` run, inside the comment's range. python-docx has no API for revisions, so
the elements are built with its oxml helpers; Word shows them as the reviewer's suggestion to
accept or reject."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

from legalbuild.contract.document import need, open_docx
from legalbuild.contract.record import comment_text, flagged

AUTHOR, INITIALS = "legalbuild audit", "LB"


def write_docx(
    record: dict[str, Any],
    path: Path,
    source_docx: bytes | None = None,
    fixes: dict[int, str] | None = None,
    author: str = AUTHOR,
) -> int:
    """Write the commented document (with `fixes` as tracked changes); returns the number of
    comments."""
    rows = [r for r in record["clauses"] if flagged(r) or r["index"] in (fixes or {})]
    changes = TrackedChanges(author)
    if source_docx is not None:
        document = open_docx(source_docx, record["document"]["name"])
        paragraphs = document.paragraphs
        for row in rows:
            loc = row["location"]
            runs = [run for p in paragraphs[loc["first"] : loc["last"] + 1] for run in _runs(p)]
            if not runs:  # text only in fields or the like: anchor on an empty run
                runs = [paragraphs[loc["first"]].add_run("")]
            _annotate(document, row, runs, (fixes or {}).get(row["index"]), changes)
    else:
        document = _clauses_document(record, fixes or {}, changes)
    document.save(str(path))
    return sum(flagged(r) for r in rows)


def _annotate(document, row: dict[str, Any], runs: list[Any], fix: str | None, changes) -> None:
    """The clause's comment (when flagged) over `runs`, then its fix as a tracked change."""
    if flagged(row):
        text = comment_text(row)
        if fix is not None:
            text += "\nAccepted in review: the suggested clause replaces it (tracked change)."
        document.add_comment(runs, text, AUTHOR, INITIALS)
    if fix is not None:
        changes.replace(document, runs, numbered(row, fix))


def numbered(row: dict[str, Any], text: str) -> str:
    """The new clause text keeps the number typed at the start of the old one ("4.1 ...")."""
    number = row["number"]
    if number and row["text"].startswith(number + " ") and not text.startswith(number):
        return f"{number} {text}"
    return text


class TrackedChanges:
    """Writes w:del/w:ins revisions by one author at one time, with ids unused in the document."""

    def __init__(self, author: str):
        self.author = author
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self.date = now.isoformat().replace("+00:00", "Z")
        self.next_id: int | None = None

    def _revision(self, document, tag: str):
        from docx.oxml import OxmlElement
        from docx.oxml.ns import qn

        if self.next_id is None:  # above every w:id already there (comments, bookmarks, ...)
            ids = [int(v) for v in document.element.xpath("//@w:id") if str(v).isdigit()]
            self.next_id = max(ids, default=0) + 1
        element = OxmlElement(tag)
        element.set(qn("w:id"), str(self.next_id))
        element.set(qn("w:author"), self.author)
        element.set(qn("w:date"), self.date)
        self.next_id += 1
        return element

    def replace(self, document, runs: list[Any], text: str) -> None:
        """`runs` deleted, `text` inserted after the last of them, as tracked changes."""
        from docx.oxml import OxmlElement
        from docx.oxml.ns import qn

        last = None
        for run in runs:
            r = run._r
            deleted = self._revision(document, "w:del")
            r.addprevious(deleted)
            deleted.append(r)
            for tag, new in (("w:t", "w:delText"), ("w:instrText", "w:delInstrText")):
                for old in r.findall(qn(tag)):
                    old.tag = qn(new)
            last = deleted
        inserted = self._revision(document, "w:ins")
        new_run = OxmlElement("w:r")
        first_props = runs[0]._r.find(qn("w:rPr"))
        if first_props is not None:
            new_run.append(copy.deepcopy(first_props))
        t = OxmlElement("w:t")
        t.set(qn("xml:space"), "preserve")
        t.text = text
        new_run.append(t)
        inserted.append(new_run)
        last.addnext(inserted)


def _runs(paragraph) -> list[Any]:
    """The paragraph's runs, those inside hyperlinks included, in order."""
    from docx.text.hyperlink import Hyperlink

    out = []
    for item in paragraph.iter_inner_content():
        out += item.runs if isinstance(item, Hyperlink) else [item]
    return out


def _clauses_document(record: dict[str, Any], fixes: dict[int, str], changes: TrackedChanges):
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
        _annotate(document, row, [run], fixes.get(row["index"]), changes)
    return document
