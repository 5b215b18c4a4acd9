"""A read document cut into the clauses to audit, with curation's splitter
(`legalbuild.curation.clauses.document_paragraphs`): every prose paragraph of at least
`MIN_WORDS` words, in document order, with its number, section heading, type and location.

`read_clauses` reads only as far as the clauses asked for: the lines read so far are split again
each time their count doubles (at most twice the work of one split), and reading stops once more
clauses than the cap are found (the clause after the cap proves the last one kept is whole)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from legalbuild.contract.document import Document, open_document
from legalbuild.contract.inputs import MAX_CLAUSES
from legalbuild.curation.clauses import clause_of, document_paragraphs, looks_like_prose
from legalbuild.errors import DataError

# Curation keeps clause-sized paragraphs of 15+ words for training; an audit keeps every sentence
# of contract prose ("This Agreement renews automatically." has four words and matters).
MIN_WORDS = 4
_FIRST_READ = 512  # lines read before the first split


@dataclasses.dataclass(frozen=True)
class ContractClause:
    index: int  # 1-based, in document order
    number: str  # "2.1", "(a)", the section's number, or ""
    heading: str  # the section it sits in ("" before the first heading)
    text: str
    clause_type: str
    unit: str  # "page" | "paragraph" | "line"
    first: (
        int  # location of its first line, in `unit`s (pages and lines 1-based, paragraphs 0-based)
    )
    last: int

    @property
    def location(self) -> dict[str, Any]:
        return {"unit": self.unit, "first": self.first, "last": self.last}

    @property
    def where(self) -> str:
        """ "p. 2", "pp. 2-3", "¶ 14", "lines 3-5" """
        short = {"page": ("p.", "pp."), "paragraph": ("¶", "¶¶"), "line": ("line", "lines")}
        one, many = short[self.unit]
        return (
            f"{one} {self.first}" if self.first == self.last else f"{many} {self.first}-{self.last}"
        )

    @property
    def label(self) -> str:
        """ "2.1 Fees and Payment", or what there is of number and heading."""
        return " ".join(part for part in (self.number, self.heading) if part) or f"#{self.index}"


def document_clauses(document: Document, min_words: int = MIN_WORDS) -> list[ContractClause]:
    """The clauses to audit of `document`; DataError-free: an empty list when there is no prose."""
    out = []
    for paragraph in document_paragraphs(document.text):
        if not looks_like_prose(paragraph.text, min_words):
            continue
        out.append(
            ContractClause(
                index=len(out) + 1,
                number=paragraph.number,
                heading=paragraph.heading,
                text=paragraph.text,
                clause_type=clause_of(paragraph),
                unit=document.unit,
                first=document.units[paragraph.first_line],
                last=document.units[paragraph.last_line],
            )
        )
    return out


def read_clauses(
    source: str | Path, encoding: str | None = None, max_clauses: int | None = None
) -> tuple[Document, list[ContractClause]]:
    """(the document as far as it was read, the clauses found in it): all of them when
    `document.complete`, else more than `max_clauses` (the caller keeps the first ones). Without
    a cap, a document of more than MAX_CLAUSES clauses is a DataError asking for one."""
    cap = min(max_clauses or MAX_CLAUSES, MAX_CLAUSES)
    opened = open_document(source, encoding)
    step, clauses = _FIRST_READ, []
    while not opened.exhausted:
        opened.read(step)
        step = max(len(opened.lines), _FIRST_READ)  # the next read doubles what has been read
        clauses = document_clauses(opened.document())
        if len(clauses) > cap:
            break
    document = opened.document()
    if len(clauses) > cap and not max_clauses:
        raise DataError(
            f"{document.name}: more than {MAX_CLAUSES:,} clauses; reading stopped there (an "
            "audit this long takes hours of serving)",
            hint=f"--max-clauses N audits the first N (at most {MAX_CLAUSES:,})",
        )
    return document, clauses
