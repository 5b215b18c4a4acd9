"""What an upload must pass before anything is asked: a sanitised name inside its own folder, a
size limit enforced while the body streams to disk, and the same readers and splitter as
`legalbuild audit` (contract/run.py `prepare`). Every refusal is a `Refused` carrying the
HTTP status the page shows with its message; a reader's own LegalbuildError (an encrypted or
scanned PDF, a file that is not what its name says) becomes a 422, and any other exception of a
reader becomes one too, so a hostile file costs one answer, never the server.

Checks made here, before a reader runs: a DOCX is a zip whose declared unpacked size and
compression ratio are bounded (a zip bomb is refused without inflating it) and none of whose XML
parts declares a DTD (Word never writes one; entities, external or nested, need one); a PDF has
at most `max_pages` pages.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

from legalbuild.errors import DataError, LegalbuildError

KINDS = (".pdf", ".docx", ".md", ".txt")
_UNSAFE = re.compile(r"[^\w.\- ]+")
_DTD = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.I)
MAX_ZIP_MEMBERS = 2_000
MAX_RATIO = 200  # unpacked / packed size of one zip member (Word's XML packs ~5-20x)


@dataclasses.dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 2**20
    max_unpacked: int = 100 * 2**20  # a DOCX's declared unpacked size
    max_pages: int = 300
    max_clauses: int = 500


class Refused(DataError):
    """A request the page refuses (an upload, a decision, a download); `status` is the HTTP
    answer (404, 409, 413, 415, 422, 507), the message and hint what the page shows."""

    def __init__(self, message: str, hint: str | None = None, status: int = 422):
        super().__init__(message, hint)
        self.status = status


def safe_name(raw: str) -> str:
    """The uploaded file's name reduced to its last path part, letters, digits, `._- `, at most
    100 characters, with one of the readable extensions; Refused (415) otherwise."""
    base = re.split(r"[\\/]", unicodedata.normalize("NFKC", raw or ""))[-1]
    name = _UNSAFE.sub("_", base).strip(" .")
    suffix = Path(name).suffix.lower()
    if suffix not in KINDS:
        shown = base[:80] or "(no name)"
        raise Refused(
            f"{shown}: not a contract legalbuild reads (.pdf, .docx, .md, .txt)",
            hint="a legacy .doc or .rtf: save it as .docx first; a scan: run OCR (ocrmypdf) first",
            status=415,
        )
    stem = Path(name).stem[: 100 - len(suffix)].strip(" .") or "contract"
    return stem + suffix


async def receive(chunks: AsyncIterator[bytes], dest: Path, declared: int | None, limits: Limits):
    """Stream the request body into `dest` (a new file), refusing (413) past `max_bytes`, before
    reading when the declared length is already too large."""
    too_big = Refused(
        f"the file is larger than the limit of {limits.max_bytes / 2**20:.0f} MB",
        hint="split the contract, or restart the page with a larger --max-upload-mb",
        status=413,
    )
    if declared is not None and declared > limits.max_bytes:
        raise too_big
    size = 0
    with dest.open("xb") as f:
        async for chunk in chunks:
            size += len(chunk)
            if size > limits.max_bytes:
                raise too_big
            f.write(chunk)
    if size == 0:
        raise Refused(f"{dest.name}: the file is empty", hint="choose the contract itself")


def check_file(path: Path, limits: Limits) -> None:
    """The zip and page checks of the module docstring, by extension."""
    if path.suffix.lower() == ".docx":
        check_docx_package(path, limits)
    elif path.suffix.lower() == ".pdf":
        check_pdf_pages(path, limits)


def check_docx_package(path: Path, limits: Limits) -> None:
    name = path.name
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise Refused(
            f"{name}: not a Word document (a .docx is a zip archive; this is not one)",
            hint="save it from Word as .docx",
        ) from None
    with archive:
        members = archive.infolist()
        unpacked = sum(m.file_size for m in members)
        if len(members) > MAX_ZIP_MEMBERS or unpacked > limits.max_unpacked:
            raise Refused(
                f"{name}: unpacks to {unpacked / 2**20:,.0f} MB in {len(members):,} parts, over "
                f"the limit of {limits.max_unpacked / 2**20:.0f} MB (a zip bomb?); not unpacked",
                hint="a contract's .docx unpacks to a few MB; save it again from Word",
                status=413,
            )
        for member in members:
            if member.file_size > 2**20 and member.file_size > MAX_RATIO * member.compress_size:
                raise Refused(
                    f"{name}: part {member.filename[:80]} packs {member.file_size / 2**20:,.0f} "
                    f"MB into {member.compress_size:,} bytes (a zip bomb?); not unpacked",
                    hint="save the contract again from Word",
                    status=413,
                )
            if member.filename.endswith((".xml", ".rels")) and _declares_dtd(archive, member):
                raise Refused(
                    f"{name}: part {member.filename[:80]} declares a DTD (entities, possibly "
                    "external); Word never writes one, so the file is refused",
                    hint="save the contract again from Word",
                )


def _declares_dtd(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bool:
    """Whether the part holds `<!DOCTYPE` or `<!ENTITY`, read in bounded chunks (a declaration
    cut by a chunk boundary is caught by the overlap)."""
    tail = b""
    try:
        with archive.open(member) as f:
            while chunk := f.read(2**16):
                if _DTD.search(tail + chunk):
                    return True
                tail = chunk[-32:]
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
        raise Refused(f"{member.filename[:80]}: a damaged zip part ({exc})") from None
    return False


def check_pdf_pages(path: Path, limits: Limits) -> None:
    from legalbuild.contract.document import need

    pypdf = need("pypdf", "pypdf")
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted:  # the reader says what to do about a password
            return
        pages = len(reader.pages)
    except Exception as exc:  # noqa: BLE001 - any failure of the parser is the file's
        raise refused_by_reader(path.name, exc) from None
    if pages > limits.max_pages:
        raise Refused(
            f"{path.name}: {pages:,} pages, over the limit of {limits.max_pages:,}",
            hint="split the PDF, or restart the page with a larger --max-pages",
            status=413,
        )


def read_upload(path: Path, limits: Limits):
    """The contract read and split as `legalbuild audit` does (a `Job`), or Refused."""
    from legalbuild.contract.run import prepare

    check_file(path, limits)
    try:
        return prepare(path, [], None, limits.max_clauses)
    except Refused:
        raise
    except LegalbuildError as exc:  # the readers' own messages name the file: keep them
        raise Refused(exc.message.replace(str(path), path.name), exc.hint) from None
    except Exception as exc:  # noqa: BLE001 - a parser failing on a hostile file
        raise refused_by_reader(path.name, exc) from None


def refused_by_reader(name: str, exc: BaseException) -> Refused:
    detail = " ".join(str(exc).split())[:200]
    return Refused(
        f"{name}: could not be read ({type(exc).__name__}: {detail})",
        hint="check that the file opens in Word or a PDF viewer; save it again and upload that",
    )
