"""Split contract documents into clauses and give each clause a type.

A document is cut into paragraphs at blank lines; heading lines (markdown `#`, ALL-CAPS titles,
short numbered titles such as "1. SOFTWARE LICENSE" or "(a) License Grant.") are not clauses but
name the section the following paragraphs belong to. List items that continue a sentence ending
in ":" or ";" are folded into the paragraph they continue. The section heading and the text pick
the clause type by keyword (a heading word counts three times a body word).
"""

from __future__ import annotations

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
_NUMBERED_TITLE = re.compile(rf"^{_NUMBER}\s+(.{{2,70}})$", re.I)
_INLINE_TITLE = re.compile(rf"^(?:{_NUMBER}\s+)?([A-Z][A-Za-z,&'’/ -]{{2,60}}?)[.:]\s+(?=\S)")
_LIST_ITEM = re.compile(r"^(?:\([a-zA-Z0-9]{1,4}\)|[a-z]\)|[ivx]+\)|[-*•·]\s)")


def split_clauses(
    text: str, doc_id: str, source: str, min_chars: int = 120, max_chars: int = 1500
) -> list[Clause]:
    """Clauses of one document: paragraphs of min_chars..max_chars characters, typed."""
    paragraphs = _paragraphs(_clean(text))
    clauses = []
    for position, (heading, body) in enumerate(paragraphs):
        if not (min_chars <= len(body) <= max_chars) or not _looks_like_prose(body):
            continue
        inline = _INLINE_TITLE.match(body)
        # a paragraph with its own title ("16.1 Limitation on Indirect Liability. ...") is typed by it
        typing_heading = (
            inline.group(1) if inline and len(inline.group(1).split()) <= 6 else heading
        )
        clause_type = classify_clause(typing_heading, body)
        clauses.append(Clause(doc_id, source, heading, body, position, clause_type))
    return clauses


def _clean(text: str) -> str:
    text = _COMMENT.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _MD_LINK.sub(r"\1", text).replace("**", "").replace("__", "")
    lines = [ln for ln in text.split("\n") if not ln.lstrip().startswith("|")]  # markdown tables
    return "\n".join(ln.replace("\t", " ").rstrip() for ln in lines)


def _paragraphs(text: str) -> list[tuple[str, str]]:
    """(section heading, paragraph text) pairs in document order."""
    out: list[tuple[str, str]] = []
    heading = ""
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
        while lines and _is_heading(lines[0]):
            heading = _heading_text(lines.pop(0))
        if not lines:
            continue
        body = " ".join(" ".join(lines).split())
        if out and _continues(out[-1][1], body) and out[-1][0] == heading:
            out[-1] = (heading, f"{out[-1][1]} {body}")
        else:
            out.append((heading, body))
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
        and len(m.group(1).split()) <= 6
        and not m.group(1).rstrip(".").endswith(("and", "or", "the"))
    )


def _heading_text(line: str) -> str:
    line = line.lstrip("#").strip()
    m = _NUMBERED_TITLE.match(line)
    return (m.group(1) if m else line).strip(" .:")


def _continues(previous: str, body: str) -> bool:
    """A list item or a lower-case start that continues the previous paragraph."""
    return previous.endswith((":", ";", " and", " or")) and (
        bool(_LIST_ITEM.match(body)) or body[:1].islower()
    )


def _looks_like_prose(body: str) -> bool:
    """Contract prose, not an address block, a URL list or a table of values."""
    words = body.split()
    if len(words) < 15:
        return False
    alpha_words = sum(1 for w in words if any(c.isalpha() for c in w))
    return alpha_words / len(words) > 0.7 and "{{" not in body and "http" not in body[:40]
