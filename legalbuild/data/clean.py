"""Text cleaning and the comparison form of a text (the filters and dedup that use them: filters.py).

- Cleaning: Unicode NFC; CR/LF and Unicode line separators become "\\n"; zero-width and control
  characters go; runs of other whitespace (tabs, NBSP...) become one space; each line is stripped
  (indentation carries no meaning in clauses or audit answers); 3+ newlines become 2.
- Folding (`fold_text`): casefolded, punctuation and whitespace folded to one space; dedup in
  `normalized` mode compares pairs in this form.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff]")
# A run of whitespace other than newline (tabs, NBSP...) that is not already one plain space:
# leaving single spaces unmatched keeps the substitution cheap on ordinary prose.
_SPACES = re.compile(r"[^\S\n ][^\S\n]*| [^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" \n ?|\n ")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """NFC, one kind of line break, no invisible characters, single spaces, at most one blank line."""
    return text.strip() if _already_clean(text) else clean_text_fully(text)


def clean_text_fully(text: str) -> str:
    """clean_text without the shortcut for text that is already clean (the reference behaviour)."""
    text = _LINE_BREAKS.sub("\n", text)
    text = _INVISIBLE.sub("", text)
    if not text.isascii():  # after removing invisibles, which can separate a letter from its accent
        text = unicodedata.normalize("NFC", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _already_clean(text: str) -> bool:
    """The common case, checked at C speed: NFC text whose only whitespace is single spaces and
    newlines (isprintable() is False for tabs, CR, controls, NBSP, zero-width and line separators)."""
    return (
        text.replace("\n", "").isprintable()
        and (text.isascii() or unicodedata.is_normalized("NFC", text))
        and "  " not in text
        and " \n" not in text
        and "\n " not in text
        and "\n\n\n" not in text
    )


@functools.cache
def _punctuation_to_space() -> dict[int, str]:
    """Every Basic Multilingual Plane punctuation character (Unicode category P*) → a space."""
    return {cp: " " for cp in range(0x10000) if unicodedata.category(chr(cp)).startswith("P")}


def fold_text(text: str) -> str:
    """The comparison form of a text: casefolded, punctuation and all whitespace folded to one space."""
    return " ".join(text.casefold().translate(_punctuation_to_space()).split())
