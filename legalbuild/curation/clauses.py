"""Split contract documents into clauses and give each clause a type.

A document is cut into paragraphs at blank lines; heading lines (markdown `#`, ALL-CAPS titles,
short numbered titles such as "1. SOFTWARE LICENSE" or "(a) License Grant.") are not clauses but
name the section the following paragraphs belong to. List items that continue a sentence ending
in ":" or ";" are folded into the paragraph they continue. The section heading and the text pick
the clause type by keyword (a heading word counts three times a body word).
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass

# Order matters only for ties: the more specific types come first.
TYPE_PATTERNS: dict[str, str] = {
    "non_compete": r"non-?compet|not compete|non-?solicit|exclusivity|competing products",
    "renewal": r"renew",
    "indemnity": r"indemn|hold harmless",
    "limitation_of_liability": r"limitation of liability|liabilit|liable|consequential damages|damages",
    "warranty": r"warrant|\bas is\b|merchantability|fitness for a particular",
    "governing_law": r"governing law|governed by|jurisdiction|\bvenue\b|arbitrat|courts? of|dispute",
    "confidentiality": r"confidential|non-disclosure|trade secret|residual",
    "data_protection": r"personal (data|information)|privacy|data protection|gdpr|data subject|sub-?processor|biometric",
    "termination": r"terminat|cancel|expir|surviv",
    "payment": r"\bfees?\b|payment|invoice|\bprices?\b|royalt|refund|\bpay\b|true.?up|overage",
    "audit": r"\baudit|inspect",
    "ip": r"intellectual property|copyright|patent|trademark|ownership|work product|derivative works|licen[cs]e grant|source code",
    "assignment": r"\bassign|transfer",
}
CLAUSE_TYPES = (*TYPE_PATTERNS, "other")
TYPE_LABELS = {
    "limitation_of_liability": "limitation of liability",
    "governing_law": "governing law and disputes",
    "data_protection": "data protection",
    "non_compete": "non-compete and exclusivity",
    "ip": "intellectual property and licence",
}
_DEFINITION = re.compile(
    r"^\W{0,3}[\"“'][^\"”']{1,60}[\"”']\s+(means|shall mean|has the meaning|refers to)", re.I
)
_TYPE_RES = {name: re.compile(p, re.I) for name, p in TYPE_PATTERNS.items()}


@dataclass(frozen=True)
class Clause:
    doc_id: str
    source: str
    heading: str
    text: str
    position: int  # order of the paragraph in its document
    clause_type: str

    @property
    def key(self) -> str:
        return f"{self.doc_id}#{self.position}"


def type_label(clause_type: str) -> str:
    return TYPE_LABELS.get(clause_type, clause_type.replace("_", " "))


def classify_clause(heading: str, text: str) -> str:
    """The clause type whose keywords weigh most; `other` when none appears.

    A heading word counts three times a body word when the body agrees with it, once otherwise:
    a section title like "Governing Law" should not make every definition below it a
    governing-law clause."""
    if _DEFINITION.match(text):
        return "other"
    scores = {}
    for name, pattern in _TYPE_RES.items():
        body_hits = min(len(pattern.findall(text)), 4)
        heading_hits = min(len(pattern.findall(heading)), 2)
        scores[name] = body_hits + heading_hits * (3 if body_hits else 1)
    best = max(scores, key=lambda n: scores[n])
    return best if scores[best] > 0 else "other"


def rule_clause_type(rule_text: str) -> str:
    """The clause type a rule speaks about, from its id, title and description."""
    return classify_clause(rule_text, "")


# ------------------------------------------------------------------------------------ splitting
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_NUMBER = r"(?:\d+(?:\.\d+)*\.?|\([a-zA-Z0-9]{1,4}\)|[A-Za-z]\.|[IVXLC]+\.|(?:section|article|clause)\s+\d+(?:\.\d+)*\.?)"
_NUMBERED_TITLE = re.compile(rf"^({_NUMBER})\s+(.{{2,70}})$", re.I)
_INLINE_TITLE = re.compile(rf"^(?:{_NUMBER}\s+)?([A-Z][A-Za-z,&'’/ -]{{2,60}}?)[.:]\s+(?=\S)")
_LEADING_NUMBER = re.compile(rf"^({_NUMBER})\s+(?=\S)", re.I)
_LIST_ITEM = re.compile(r"^(?:\([a-zA-Z0-9]{1,4}\)|[a-z]\)|[ivx]+\)|[-*•·]\s)")
_BLOCK_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Paragraph:
    """One paragraph of a document as the splitter sees it: the section it sits in, its own
    number when it starts with one ("1.1", "(a)") or else its section's, and the lines (0-based,
    of the text after "\r\n" -> "\n") it spans, so a caller can point back into the document."""

    heading: str
    number: str
    text: str
    position: int  # order among the document's paragraphs
    first_line: int
    last_line: int


def split_clauses(
    text: str, doc_id: str, source: str, min_chars: int = 120, max_chars: int = 1500
) -> list[Clause]:
    """Clauses of one document: paragraphs of min_chars..max_chars characters, typed."""
    clauses = []
    for p in document_paragraphs(text):
        if not (min_chars <= len(p.text) <= max_chars) or not looks_like_prose(p.text):
            continue
        clauses.append(Clause(doc_id, source, p.heading, p.text, p.position, clause_of(p)))
    return clauses


def clause_of(paragraph: Paragraph) -> str:
    """The clause type of a paragraph: a paragraph with its own title ("16.1 Limitation on
    Indirect Liability. ...") is typed by it, otherwise by its section heading."""
    body = paragraph.text
    inline = _INLINE_TITLE.match(body)
    typing_heading = (
        inline.group(1) if inline and len(inline.group(1).split()) <= 6 else paragraph.heading
    )
    return classify_clause(typing_heading, body)


def document_paragraphs(text: str) -> list[Paragraph]:
    """Every paragraph of a document in order, headings folded into the paragraphs they title and
    list items into the sentence they continue (`split_clauses` then keeps the clause-sized prose;
    `legalbuild audit` keeps every prose paragraph)."""
    out: list[Paragraph] = []
    heading, heading_number = "", ""
    cleaned, line_map = _clean(text)
    for first, block in _blocks(cleaned):
        numbered = [(line_map[first + i], ln.strip()) for i, ln in enumerate(block.split("\n"))]
        lines = [(n, ln) for n, ln in numbered if ln and not ln.startswith("|")]  # md tables
        while lines and _is_heading(lines[0][1]):
            heading, heading_number = _heading_parts(lines.pop(0)[1])
        if not lines:
            continue
        body = " ".join(" ".join(ln for _, ln in lines).split())
        previous = out[-1] if out else None
        if previous and _continues(previous.text, body) and previous.heading == heading:
            out[-1] = dataclasses.replace(
                previous, text=f"{previous.text} {body}", last_line=lines[-1][0]
            )
            continue
        own = _LEADING_NUMBER.match(body)
        number = own.group(1).rstrip(".") if own else heading_number
        out.append(Paragraph(heading, number, body, len(out), lines[0][0], lines[-1][0]))
    return out


def _clean(text: str) -> tuple[str, list[int]]:
    """Markup removed, and for each line of the result the line of `text` (after "\r\n" -> "\n")
    it starts on, so paragraph line numbers point into the original. Markdown table rows stay
    (lines starting with "|"); `document_paragraphs` skips them."""
    original = text.replace("\r\n", "\n").replace("\r", "\n")
    kept, cuts, start = [], [], 0  # cuts: (offset in the cleaned text, characters cut so far)
    for m in _COMMENT.finditer(original):  # a comment is cut out as if it had never been there
        kept.append(original[start : m.start()])
        start = m.end()
        removed = cuts[-1][1] if cuts else 0
        cuts.append((m.start() - removed, removed + m.end() - m.start()))
    kept.append(original[start:])
    text = "".join(kept)
    newlines = [m.start() for m in re.finditer("\n", original)]
    line_map, offset, cut = [], 0, 0
    pending = iter(cuts)
    upcoming = next(pending, None)
    for line in text.split("\n"):
        while upcoming is not None and upcoming[0] <= offset:
            cut, upcoming = upcoming[1], next(pending, None)
        line_map.append(bisect.bisect_left(newlines, offset + cut))
        offset += len(line) + 1
    text = _MD_LINK.sub(r"\1", text).replace("**", "").replace("__", "")
    return "\n".join(ln.replace("\t", " ").rstrip() for ln in text.split("\n")), line_map


def _blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, block) for the blocks of text between blank lines."""
    out, start, line = [], 0, 0
    for m in _BLOCK_BREAK.finditer(text):
        out.append((line, text[start : m.start()]))
        line += text.count("\n", start, m.end())
        start = m.end()
    out.append((line, text[start:]))
    return out


def _is_heading(line: str) -> bool:
    if line.startswith("#"):
        return True
    if len(line) > 80 or line.endswith((",", ";")):
        return False
    letters = [c for c in line if c.isalpha()]
    if (
        len(letters) >= 3
        and sum(c.isupper() for c in letters) / len(letters) > 0.8
        and len(line.split()) <= 10
    ):
        return True
    m = _NUMBERED_TITLE.match(line)
    return (
        bool(m)
        and len(m.group(2).split()) <= 6
        and not m.group(2).rstrip(".").endswith(("and", "or", "the"))
    )


def _heading_parts(line: str) -> tuple[str, str]:
    """(title, number) of a heading line: "3. Limitation of Liability" -> ("Limitation of
    Liability", "3"); "# Fees" -> ("Fees", "")."""
    line = line.lstrip("#").strip()
    m = _NUMBERED_TITLE.match(line)
    title, number = (m.group(2), m.group(1).rstrip(".")) if m else (line, "")
    return title.strip(" .:"), number


def _continues(previous: str, body: str) -> bool:
    """A list item or a lower-case start that continues the previous paragraph."""
    return previous.endswith((":", ";", " and", " or")) and (
        bool(_LIST_ITEM.match(body)) or body[:1].islower()
    )


def looks_like_prose(body: str, min_words: int = 15) -> bool:
    """Contract prose, not an address block, a URL list or a table of values."""
    words = body.split()
    if len(words) < min_words:
        return False
    alpha_words = sum(1 for w in words if any(c.isalpha() for c in w))
    return alpha_words / len(words) > 0.7 and "{{" not in body and "http" not in body[:40]
