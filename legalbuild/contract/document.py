"""Read a contract into plain text that curation's splitter understands, remembering for each line
where it came from: the PDF page, the DOCX paragraph (index into `python-docx`'s
`Document.paragraphs`) or the text line.

- PDF: the text layer through `pypdf`'s layout mode, which turns vertical gaps into blank lines
  (paragraph breaks); page numbers alone on a line are dropped; a numbered line ("2.1 The ...")
  after a finished sentence starts a new paragraph even without a gap. Encrypted files are tried
  with the empty password (permission-only encryption) and otherwise refused; a file without a
  text layer is refused with the OCR command.
- DOCX: one paragraph per line, blank lines between; Heading/Title styles become `#` headings and
  Word's automatic list numbers are written out ("2.1") as the reader sees them.
- Text and Markdown (and "-", standard input): UTF-8, or UTF-16 with a byte-order mark, or the
  `encoding` given.
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
import zipfile
from pathlib import Path

from legalbuild.errors import DataError, LegalbuildError
from legalbuild.files import decode_utf8

PDF_MAGIC = b"%PDF-"
ZIP_MAGIC = b"PK\x03\x04"
_PAGE_NUMBER = re.compile(
    r"^(?:page\s+)?\d{1,4}(?:\s*(?:of|/)\s*\d{1,4})?$|^-\s*\d{1,4}\s*-$", re.I
)
_CLAUSE_START = re.compile(
    r"^(?:\d+(?:\.\d+)+\.?|\d+\.|\([a-z0-9]{1,4}\)|(?:section|article)\s+\d)\s", re.I
)
_HEADING_STYLE = re.compile(r"^(?:heading\s*(\d)|title)$", re.I)


def need(module: str, package: str):
    """`module` imported, or an error naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise LegalbuildError(
            f"this needs the {package} package", hint="pip install 'legalbuild[audit]'"
        ) from None


@dataclasses.dataclass
class Document:
    """A contract as text. `units[i]` is where line i of `text` came from: a page number (1-based)
    for a PDF, a paragraph index (0-based) for a DOCX, a line number (1-based) otherwise."""

    name: str
    kind: str  # "pdf" | "docx" | "text"
    text: str
    units: list[int]
    raw: bytes | None = None  # a DOCX's bytes: the commented copy is written from them

    @property
    def unit(self) -> str:
        return {"pdf": "page", "docx": "paragraph"}.get(self.kind, "line")


def read_document(source: str | Path, encoding: str | None = None) -> Document:
    """The document at `source` ("-" for standard input), by extension, checked by content."""
    if str(source) == "-":
        name, data, suffix = "<stdin>", sys.stdin.buffer.read(), ""
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(
                f"{path}: no such file",
                hint="give a .pdf, .docx, .md or .txt contract, or - for standard input",
            )
        name, data, suffix = str(path), path.read_bytes(), path.suffix.lower()
    if not data.strip():
        raise DataError(f"{name}: the file is empty", hint="point at the contract itself")
    if suffix == ".pdf" or (not suffix and data.startswith(PDF_MAGIC)):
        return read_pdf(data, name)
    if suffix == ".docx" or (not suffix and data.startswith(ZIP_MAGIC)):
        return read_docx(data, name)
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
    return read_text(data, name, encoding)


def read_text(data: bytes, name: str, encoding: str | None = None) -> Document:
    # the splitter's lines: "\r\n" and a lone "\r" (old Mac files) both end a line
    text = decode_text(data, name, encoding).replace("\r\n", "\n").replace("\r", "\n")
    return Document(name, "text", text, list(range(1, text.count("\n") + 2)))


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
            return data.decode(codec)
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
def read_pdf(data: bytes, name: str) -> Document:
    pypdf = need("pypdf", "pypdf")
    from pypdf.errors import PdfReadError

    if not data.startswith(PDF_MAGIC):
        raise DataError(f"{name}: not a PDF (no %PDF- header)", hint="check the file")
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DataError(
                f"{name}: the PDF is encrypted with a password",
                hint=f"decrypt it first, e.g. `qpdf --decrypt --password=PASSWORD {name} plain.pdf`",
            )
        pages = [page.extract_text(extraction_mode="layout") for page in reader.pages]
    except PdfReadError as exc:
        raise DataError(f"{name}: not a readable PDF ({exc})", hint="check the file") from None
    lines: list[str] = []
    units: list[int] = []
    for number, page in enumerate(pages, 1):
        page_lines = _page_lines(page)
        # a blank line between pages, unless a sentence runs over the page break
        if lines and page_lines and lines[-1].endswith((".", ":", ";")):
            lines.append("")
            units.append(number)
        lines += page_lines
        units += [number] * len(page_lines)
    if sum(len(ln) for ln in lines) < 10 * len(pages):
        raise DataError(
            f"{name}: the PDF has no text layer ({len(pages)} page(s) of images: a scan?); "
            "it needs OCR first",
            hint=f"e.g. `ocrmypdf {name} searchable.pdf`, then audit searchable.pdf",
        )
    return Document(name, "pdf", "\n".join(lines), units)


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


# ------------------------------------------------------------------------------------------- DOCX
def read_docx(data: bytes, name: str) -> Document:
    paragraphs = docx_paragraph_lines(open_docx(data, name))
    lines: list[str] = []
    units: list[int] = []
    for index, line in enumerate(paragraphs):
        lines += [line, ""]
        units += [index, index]
    if not any(ln.strip() for ln in lines):
        raise DataError(f"{name}: the Word document has no text", hint="check the file")
    return Document(name, "docx", "\n".join(lines), units, raw=data)


def open_docx(data: bytes, name: str):
    """python-docx's Document of `data`; DataError when it is not a Word document."""
    docx = need("docx", "python-docx")

    if not data.startswith(ZIP_MAGIC):
        raise DataError(
            f"{name}: not a DOCX file (a .docx is a zip archive; this is not one)",
            hint="save it from Word as .docx, or give it its real extension",
        )
    try:
        return docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise DataError(
            f"{name}: a zip archive, but not a Word document ({exc})",
            hint="save it from Word as .docx",
        ) from None


def docx_paragraph_lines(document) -> list[str]:
    """One line per paragraph of `document.paragraphs`: headings as `#` lines, list numbers
    written out, line breaks inside a paragraph flattened."""
    counters: dict[str, list[int]] = {}
    out = []
    for paragraph in document.paragraphs:
        text = " ".join(paragraph.text.split())
        style = paragraph.style.name if paragraph.style is not None else ""
        number = _list_number(paragraph, counters) if text else ""
        if number:
            text = f"{number} {text}"
        heading = _HEADING_STYLE.match(style or "")
        if heading and text:
            text = "#" * int(heading.group(1) or 1) + " " + text
        out.append(text)
    return out


def _list_number(paragraph, counters: dict[str, list[int]]) -> str:
    """The automatic number Word shows before a numbered paragraph ("1.", "2.1"), counted per list
    and level (decimal numbering assumed); "" when the paragraph is not numbered."""
    num_pr = _num_pr(paragraph)
    if num_pr is None or num_pr.numId is None:
        return ""
    level = num_pr.ilvl.val if num_pr.ilvl is not None else 0
    counts = counters.setdefault(str(num_pr.numId.val), [])
    del counts[level + 1 :]
    counts.extend([0] * (level + 1 - len(counts)))
    counts[level] += 1
    return ".".join(str(c) for c in counts) + ("." if level == 0 else "")


def _num_pr(paragraph):
    p_pr = paragraph._p.pPr
    if p_pr is not None and p_pr.numPr is not None:
        return p_pr.numPr
    style = paragraph.style
    while style is not None:  # "List Number" and the like carry the numbering in the style
        s_pr = style.element.pPr
        if s_pr is not None and s_pr.numPr is not None:
            return s_pr.numPr
        style = style.base_style
    return None
