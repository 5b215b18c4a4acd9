"""Reading a DOCX without trusting it: one line per body paragraph, as python-docx's
`Document.paragraphs` lists them (a paragraph's index is its unit), headings as `#` lines and
Word's automatic list numbers written out ("2.1").

A DOCX is a zip archive of XML parts. Before anything is inflated, the archive's own directory is
checked: at most `MAX_PARTS` parts, each declaring at most `MAX_PART_BYTES` uncompressed and all
of them `MAX_TOTAL_BYTES` (a 1 MB zip bomb declares its gigabyte and is refused unread; zipfile
never returns more than a part declares, and a part that inflates further fails its CRC). The
main part is parsed as a stream (lxml's pull parser with python-docx's element classes), each
body paragraph dropped once read, so memory stays bounded and reading stops where the splitter
stops asking (a clause cap). A part with a DTD is refused (Word never writes one: it is how entity
bombs and external entities come in); entities are never resolved, nothing is fetched, nesting
stops at libxml2's 256 levels. Any failure of the zip or XML layers on a hostile file is a
DataError naming the file.

`open_docx` gives python-docx's Document of a checked archive (for the commented copy).
"""

from __future__ import annotations

import contextlib
import functools
import io
import posixpath
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

from legalbuild.contract.inputs import MAX_UNITS, ZIP_MAGIC, need, too_long
from legalbuild.errors import DataError

MAX_PARTS = 10_000
MAX_PART_BYTES = 64 * 2**20  # declared uncompressed size of one part
MAX_TOTAL_BYTES = 256 * 2**20  # of all parts together (python-docx loads them all)
W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
_HEADING_STYLE = re.compile(r"^(?:heading\s*(\d)|title)$", re.I)
_CHUNK = 1 << 16
_DOCTYPE = re.compile(rb"<!\s*DOCTYPE", re.I)  # in a part's first chunk: before any element


def docx_lines(data: bytes, name: str) -> Iterator[tuple[str, int]]:
    """(line, paragraph index) for each body paragraph and the blank line after it, read as asked for."""
    archive = checked_archive(data, name)
    with docx_errors(name):
        main = _main_part(archive, name)
        styles = _styles(archive, main, name)
        counters: dict[str, list[int]] = {}
        found_text = False
        for index, paragraph in enumerate(_body_paragraphs(archive, main, name)):
            if index >= MAX_UNITS["docx"]:
                raise too_long(name, "docx")
            line = paragraph_line(paragraph, styles, counters)
            found_text = found_text or bool(line.strip())
            yield line, index
            yield "", index
    if not found_text:
        raise DataError(f"{name}: the Word document has no text", hint="check the file")


def checked_archive(
    data: bytes,
    name: str,
    max_parts: int = MAX_PARTS,
    max_part_bytes: int = MAX_PART_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> zipfile.ZipFile:
    """The zip archive of a DOCX, its declared sizes within the limits (nothing inflated yet).
    The review page passes its own, lower limits for uploads."""
    if not data.startswith(ZIP_MAGIC):
        raise DataError(
            f"{name}: not a DOCX file (a .docx is a zip archive; this is not one)",
            hint="save it from Word as .docx, or give it its real extension",
        )
    _check_directory(data, name, max_parts)
    with docx_errors(name):
        archive = zipfile.ZipFile(io.BytesIO(data))
        parts = archive.infolist()
    biggest = max(parts, key=lambda p: p.file_size, default=None)
    total = sum(p.file_size for p in parts)
    if biggest is not None and (biggest.file_size > max_part_bytes or total > max_total_bytes):
        raise DataError(
            f"{name}: its parts would inflate to {total:,} bytes ({biggest.filename}: "
            f"{biggest.file_size:,}), more than a Word document holds (at most "
            f"{max_part_bytes / 2**20:g} MiB a part, {max_total_bytes / 2**20:g} MiB in all): a "
            "zip bomb, or not a contract; nothing was inflated",
            hint="check where the file came from; save the contract from Word as a new .docx",
        )
    return archive


def _check_directory(data: bytes, name: str, max_parts: int = MAX_PARTS) -> None:
    """Refuse an archive whose directory lists more parts than a DOCX has, before zipfile reads
    it (it builds an object per entry)."""
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65_535))
    if at < 0 or at + 22 > len(data):
        return  # not a zip archive: zipfile says so
    entries, size = struct.unpack_from("<HL", data, at + 10)
    if entries > max_parts or size > max_parts * 1024:
        raise DataError(
            f"{name}: a zip archive of {entries:,} parts ({size:,}-byte directory), more than "
            f"a Word document has (at most {max_parts:,})",
            hint="check where the file came from; save the contract from Word as a new .docx",
        )


@contextlib.contextmanager
def docx_errors(name: str) -> Iterator[None]:
    """The zip and XML layers' failures on a damaged or hostile file as DataErrors naming it. Any
    exception counts: the file is untrusted, and a parser fails on it in ways nobody listed."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:
        what = f"{type(exc).__name__}: {str(exc)[:200]}"
        raise DataError(
            f"{name}: not a readable Word document ({what})",
            hint="save it from Word as .docx (a damaged file: open and re-save it there)",
        ) from None


def _parser(pull: bool = False) -> Any:
    """lxml with python-docx's element classes: no entity resolved, no DTD loaded, no network,
    libxml2's default limits (huge_tree off)."""
    from lxml import etree

    element_classes = need("docx.oxml.parser", "python-docx").element_class_lookup
    options = {"resolve_entities": False, "no_network": True, "load_dtd": False}
    options.update(huge_tree=False, remove_blank_text=True)
    parser = etree.XMLPullParser(events=("end",), **options) if pull else etree.XMLParser(**options)
    parser.set_element_class_lookup(element_classes)
    return parser


def _refuse_dtd(element: Any, name: str, part: str) -> None:
    info = element.getroottree().docinfo
    if info.internalDTD is not None or info.doctype:
        _dtd_error(name, part)


def _refuse_dtd_text(head: bytes, name: str, part: str) -> None:
    """The same refusal from a part's first bytes, before the parser sees its entities."""
    if _DOCTYPE.search(head):
        _dtd_error(name, part)


def _dtd_error(name: str, part: str) -> None:
    raise DataError(
        f"{name}: {part} has a DTD (<!DOCTYPE>), which Word never writes; it is how entity "
        "bombs and external entities get into XML, so legalbuild refuses it",
        hint="save the contract from Word as a new .docx",
    )


def _parse_part(archive: zipfile.ZipFile, part: str, name: str) -> Any:
    from lxml import etree

    data = archive.read(part)
    _refuse_dtd_text(data[:_CHUNK], name, part)
    root = etree.fromstring(data, _parser())
    _refuse_dtd(root, name, part)
    return root


def _target(archive: zipfile.ZipFile, source: str, kind: str, name: str) -> str | None:
    """The part a relationship of `kind` from `source` ("" for the package) points at."""
    folder, base = posixpath.split(source)
    rels = posixpath.join(folder, "_rels", f"{base}.rels")
    if rels not in archive.NameToInfo:
        return None
    for rel in _parse_part(archive, rels, name).iter(REL):
        if rel.get("Type", "").endswith(f"/{kind}") and rel.get("TargetMode") != "External":
            target = rel.get("Target", "")
            return posixpath.normpath(posixpath.join(folder, target).lstrip("/"))
    return None


def _main_part(archive: zipfile.ZipFile, name: str) -> str:
    main = _target(archive, "", "officeDocument", name)
    if main is None or main not in archive.NameToInfo:
        raise DataError(
            f"{name}: a zip archive, but not a Word document (no main document part such as "
            "word/document.xml)",
            hint="save it from Word as .docx",
        )
    return main


def _styles(archive: zipfile.ZipFile, main: str, name: str) -> Callable[[str | None], Any]:
    """Paragraph style id -> python-docx's style (None without a styles part), remembered: a
    lookup searches every style of the document, and it runs once per paragraph."""
    part = _target(archive, main, "styles", name)
    if part is None or part not in archive.NameToInfo:
        return lambda _style_id: None
    from docx.enum.style import WD_STYLE_TYPE
    from docx.styles.styles import Styles

    styles = Styles(_parse_part(archive, part, name))

    @functools.lru_cache(maxsize=1024)
    def style(style_id: str | None) -> Any:
        return styles.get_by_id(style_id, WD_STYLE_TYPE.PARAGRAPH)

    return style


def _body_paragraphs(archive: zipfile.ZipFile, main: str, name: str) -> Iterator[Any]:
    """The `w:p` children of `w:body`, in order, each removed from the tree once used."""
    parser = _parser(pull=True)
    checked = False
    with archive.open(main) as stream:
        while chunk := stream.read(_CHUNK):
            if not checked:
                _refuse_dtd_text(chunk, name, main)
            parser.feed(chunk)
            for _event, element in parser.read_events():
                if not checked:
                    _refuse_dtd(element, name, main)
                    _check_root(element.getroottree().getroot(), name, main)
                    checked = True
                parent = element.getparent()
                if parent is None or parent.tag != f"{W}body":
                    continue
                if element.tag == f"{W}p":
                    yield element
                parent.remove(element)  # read: memory holds one paragraph at a time
        parser.close()


def _check_root(root: Any, name: str, part: str) -> None:
    if root.tag != f"{W}document":
        raise DataError(
            f"{name}: a zip archive, but not a Word document ({part} is <{root.tag}>)",
            hint="save it from Word as .docx",
        )


def paragraph_line(paragraph: Any, style_of: Callable, counters: dict[str, list[int]]) -> str:
    """The paragraph's text on one line: a heading as a `#` line, a list number written out."""
    if len(paragraph) == 0:  # <w:p/>: no text, no number (the fast path of a padded document)
        return ""
    text = " ".join(paragraph.text.split())
    style = style_of(paragraph.style)
    number = _list_number(paragraph, style, counters) if text else ""
    if number:
        text = f"{number} {text}"
    heading = _HEADING_STYLE.match(style.name or "") if style is not None else None
    if heading and text:
        text = "#" * int(heading.group(1) or 1) + " " + text
    return text


def _list_number(paragraph: Any, style: Any, counters: dict[str, list[int]]) -> str:
    """The automatic number Word shows before a numbered paragraph ("1.", "2.1"), counted per list
    and level (decimal numbering assumed); "" when the paragraph is not numbered."""
    num_pr = _num_pr(paragraph, style)
    if num_pr is None or num_pr.numId is None:
        return ""
    level = min(max(num_pr.ilvl.val if num_pr.ilvl is not None else 0, 0), 8)  # Word has 9 levels
    counts = counters.setdefault(str(num_pr.numId.val), [])
    del counts[level + 1 :]
    counts.extend([0] * (level + 1 - len(counts)))
    counts[level] += 1
    return ".".join(str(c) for c in counts) + ("." if level == 0 else "")


def _num_pr(paragraph: Any, style: Any) -> Any:
    p_pr = paragraph.pPr
    if p_pr is not None and p_pr.numPr is not None:
        return p_pr.numPr
    for _ in range(16):  # "List Number" and the like carry it in the style (a cycle stops here)
        if style is None:
            return None
        s_pr = style.element.pPr
        if s_pr is not None and s_pr.numPr is not None:
            return s_pr.numPr
        style = style.base_style
    return None


def open_docx(data: bytes, name: str) -> Any:
    """python-docx's Document of `data` (for writing the commented copy); DataError when it is
    not a Word document or would inflate past the limits."""
    docx = need("docx", "python-docx")
    checked_archive(data, name)
    with docx_errors(name):
        return docx.Document(io.BytesIO(data))
