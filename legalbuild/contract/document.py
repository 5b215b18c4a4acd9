"""Read a contract into plain text that curation's splitter understands, remembering for each line
where it came from: the PDF page, the DOCX paragraph (index into `python-docx`'s
`Document.paragraphs`) or the text line.

- PDF: the text layer through `pypdf`'s layout mode, which turns vertical gaps into blank lines
  (paragraph breaks); page numbers alone on a line are dropped; a numbered line ("2.1 The ...")
  after a finished sentence starts a new paragraph even without a gap. Encrypted files are tried
  with the empty password (permission-only encryption) and otherwise refused; a file without a
  text layer is refused with the OCR command.
- DOCX (docx_in.py): one paragraph per line, blank lines between; Heading/Title styles become `#`
  headings and Word's automatic list numbers are written out ("2.1") as the reader sees them.
- Text and Markdown (and "-", standard input): UTF-8, or UTF-16 with a byte-order mark, or the
  `encoding` given.

A contract is untrusted input, read within the limits of inputs.py. Pages and paragraphs are
parsed as the splitter asks for them (`Source.read`), so an audit of the first N clauses stops
reading there. A parser's failure on a hostile file (a PDF decompression bomb, an encryption
method pypdf lacks) is a DataError naming the file, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from legalbuild.contract.inputs import (
    MAX_BINARY_BYTES,
    MAX_TEXT_BYTES,
    MAX_UNITS,
    PDF_MAGIC,
    ZIP_MAGIC,
    check_size,
    need,
    too_long,
)
from legalbuild.errors import DataError
from legalbuild.files import decode_utf8, open_regular

_PAGE_NUMBER = re.compile(
    r"^(?:page\s+)?\d{1,4}(?:\s*(?:of|/)\s*\d{1,4})?$|^-\s*\d{1,4}\s*-$", re.I
)
_CLAUSE_START = re.compile(
    r"^(?:\d+(?:\.\d+)+\.?|\d+\.|\([a-z0-9]{1,4}\)|(?:section|article)\s+\d)\s", re.I
)


@dataclasses.dataclass
class Document:
    """A contract as text. `units[i]` is where line i of `text` came from: a page number (1-based)
    for a PDF, a paragraph index (0-based) for a DOCX, a line number (1-based) otherwise.
    `complete` is False when reading stopped before the end (at a clause cap)."""

    name: str
    kind: str  # "pdf" | "docx" | "text"
    text: str
    units: list[int]
    raw: bytes | None = None  # a DOCX's bytes: the commented copy is written from them
    complete: bool = True

    @property
    def unit(self) -> str:
        return {"pdf": "page", "docx": "paragraph"}.get(self.kind, "line")


class Source:
    """A contract opened for reading: its (line, unit) pairs are produced as they are asked for,
    so that reading can stop early; `document()` is what has been read so far."""

    def __init__(self, name: str, kind: str, lines: Iterator[tuple[str, int]], raw=None):
        self.name, self.kind, self.raw = name, kind, raw
        self._pending = lines
        self.lines: list[str] = []
        self.units: list[int] = []
        self.exhausted = False

    def read(self, count: int | None = None) -> int:
        """Read up to `count` more lines (all of them with None); how many were read."""
        before = len(self.lines)
        for line, unit in itertools.islice(self._pending, count):
            self.lines.append(line)
            self.units.append(unit)
        read = len(self.lines) - before
        if count is None or read < count:
            self.exhausted = True
        return read

    def document(self) -> Document:
        text = "\n".join(self.lines)
        return Document(self.name, self.kind, text, list(self.units), self.raw, self.exhausted)


def read_document(source: str | Path, encoding: str | None = None) -> Document:
    """The whole document at `source` ("-" for standard input), by extension, checked by content."""
    opened = open_document(source, encoding)
    opened.read()
    return opened.document()


def open_document(source: str | Path, encoding: str | None = None) -> Source:
    """The document at `source` opened for reading (see `Source`); DataError for what cannot be
    read: a missing file, a device, more than the limits, a format legalbuild does not read."""
    name, data, suffix = read_source(source)
    if not data.strip():
        raise DataError(f"{name}: the file is empty", hint="point at the contract itself")
    if suffix == ".pdf" or (not suffix and data.startswith(PDF_MAGIC)):
        return Source(name, "pdf", pdf_lines(data, name))
    if suffix == ".docx" or (not suffix and data.startswith(ZIP_MAGIC)):
        from legalbuild.contract.docx_in import docx_lines

        return Source(name, "docx", docx_lines(data, name), raw=data)
    if suffix == ".doc":
        raise DataError(
            f"{name}: a legacy Word .doc file; legalbuild reads .docx",
            hint=f"convert it, e.g. `libreoffice --headless --convert-to docx {name}`",
        )
    if data.startswith((PDF_MAGIC, ZIP_MAGIC)):
        kind = "PDF" if data.startswith(PDF_MAGIC) else "zip (DOCX?)"
        raise DataError(
            f"{name}: this is a {kind} file, not text", hint="give it its real extension"
        )
    text = decode_text(data, name, encoding).replace("\r\n", "\n").replace("\r", "\n")
    return Source(name, "text", counted(text_lines(text), name, "text"))


def read_source(source: str | Path) -> tuple[str, bytes, str]:
    """(name, bytes, lower-case suffix) of a file or of standard input, reading no more than the
    limit of its kind (plus one byte, to know it is over): /dev/zero on standard input stops there."""
    if str(source) == "-":
        name, suffix, stream = "<stdin>", "", sys.stdin.buffer
        return name, _read_capped(stream, name), suffix
    path = Path(source)
    name, suffix = str(path), path.suffix.lower()
    with open_regular(
        path, "give a .pdf, .docx, .md or .txt contract, or - for standard input"
    ) as f:
        return name, _read_capped(f, name), suffix


def _read_capped(stream: BinaryIO, name: str) -> bytes:
    head = stream.read(len(PDF_MAGIC))
    binary = head.startswith((PDF_MAGIC, ZIP_MAGIC))
    limit = MAX_BINARY_BYTES if binary else MAX_TEXT_BYTES
    data = head + stream.read(limit + 1 - len(head))
    check_size(name, len(data), limit, "" if binary else " of text")
    return data


def text_lines(text: str) -> Iterator[tuple[str, int]]:
    for number, line in enumerate(text.split("\n"), 1):
        yield line, number


def counted(lines: Iterator[tuple[str, int]], name: str, kind: str) -> Iterator[tuple[str, int]]:
    """`lines`, with a DataError once their units pass MAX_UNITS[kind] (reading stops there)."""
    for line, unit in lines:
        if unit > MAX_UNITS[kind]:
            raise too_long(name, kind)
        yield line, unit


def decode_text(data: bytes, name: str, encoding: str | None) -> str:
    if encoding:
        try:
            return data.decode(encoding)
        except LookupError:
            raise DataError(
                f"unknown encoding {encoding!r}", hint="e.g. --encoding cp1252 or latin-1"
            ) from None
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{name}: byte {exc.start} is not valid {encoding}",
                hint="try another --encoding",
            ) from None
    for bom, codec in ((b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):  # a byte-order mark says exactly what the text is
            try:
                return data.decode(codec)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{name}: byte {exc.start} is not valid UTF-16 (after a UTF-16 byte-order mark)",
                    hint="pass its encoding, e.g. --encoding cp1252",
                ) from None
    try:
        return decode_utf8(data, name, what="document")
    except DataError as exc:
        if "NUL bytes" in exc.message:
            raise DataError(
                f"{name}: a binary file, not text",
                hint="give a .pdf, .docx, .md or .txt contract (or pass --encoding utf-16)",
            ) from None
        raise DataError(
            exc.message,
            hint="pass its encoding, e.g. --encoding cp1252 (Windows) or --encoding latin-1",
        ) from None


# -------------------------------------------------------------------------------------------- PDF
def pdf_lines(data: bytes, name: str) -> Iterator[tuple[str, int]]:
    """The lines of a PDF's text layer with their page numbers, page by page as they are read."""
    pypdf = need("pypdf", "pypdf")

    if not data.startswith(PDF_MAGIC):
        raise DataError(f"{name}: not a PDF (no %PDF- header)", hint="check the file")
    with pdf_errors(name):
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DataError(
                f"{name}: the PDF is encrypted with a password",
                hint=f"decrypt it first, e.g. `qpdf --decrypt --password=PASSWORD {name} plain.pdf`",
            )
        pages = len(reader.pages)
    last, chars = "", 0
    for number in range(1, pages + 1):
        if number > MAX_UNITS["pdf"]:
            raise too_long(name, "pdf")
        with pdf_errors(name):
            page_lines = _page_lines(
                reader.pages[number - 1].extract_text(extraction_mode="layout")
            )
        # a blank line between pages, unless a sentence runs over the page break
        if last.endswith((".", ":", ";")) and page_lines:
            yield "", number
        for line in page_lines:
            yield line, number
        last = page_lines[-1] if page_lines else last
        chars += sum(len(ln) for ln in page_lines)
    if chars < 10 * pages:
        raise DataError(
            f"{name}: the PDF has no text layer ({pages} page(s) of images: a scan?); "
            "it needs OCR first",
            hint=f"e.g. `ocrmypdf {name} searchable.pdf`, then audit searchable.pdf",
        )


@contextlib.contextmanager
def pdf_errors(name: str) -> Iterator[None]:
    """pypdf's failures on a damaged or hostile file as DataErrors naming it. Any exception counts:
    the file is untrusted, and a parser can fail on it in ways its authors did not list."""
    from pypdf.errors import LimitReachedError

    try:
        yield
    except DataError:
        raise
    except LimitReachedError as exc:
        raise DataError(
            f"{name}: the PDF holds more than pypdf reads safely ({exc}): a decompression bomb, "
            "or a damaged file",
            hint="check the file; print it to a new PDF from a viewer you trust, then audit that",
        ) from None
    except NotImplementedError as exc:
        raise DataError(
            f"{name}: the PDF uses a method pypdf cannot read ({exc}), e.g. an unknown encryption",
            hint=f"decrypt or convert it first, e.g. `qpdf --decrypt {name} plain.pdf`",
        ) from None
    except Exception as exc:
        raise DataError(
            f"{name}: not a readable PDF ({type(exc).__name__}: {str(exc)[:200]})",
            hint="check the file; print it to a new PDF, then audit that",
        ) from None


def _page_lines(page_text: str) -> list[str]:
    """Lines of one page in layout mode: stripped, page numbers dropped, a numbered clause after
    a finished sentence put in a paragraph of its own."""
    out: list[str] = []
    for raw in page_text.split("\n"):
        line = " ".join(raw.split())
        if _PAGE_NUMBER.match(line):
            continue
        if line and out and out[-1].endswith((".", ";")) and _CLAUSE_START.match(line):
            out.append("")
        out.append(line)
    while out and not out[-1]:
        out.pop()
    while out and not out[0]:
        out.pop(0)
    return out
