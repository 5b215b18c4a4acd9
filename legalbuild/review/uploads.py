"""What an upload must pass before anything is asked: a sanitised name inside its own folder, a
size limit enforced while the body streams to disk, and the same readers and splitter as
`legalbuild audit` (contract/run.py `prepare`). Every refusal is a `Refused` carrying the
HTTP status the page shows with its message; a reader's own LegalbuildError (an encrypted or
scanned PDF, a file that is not what its name says) becomes a 422, and any other exception of a
reader becomes one too, so a hostile file costs one answer, never the server.

Checks made here, before a reader runs: a DOCX's declared unpacked size and part count are
within the page's limits (the reader's own check, contract/docx_in.py, with lower limits: a zip
bomb is refused without inflating it; a DTD is refused by the reader as it parses); a PDF has at
most `max_pages` pages.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

from legalbuild.errors import DataError, LegalbuildError

KINDS = (".pdf", ".docx", ".md", ".txt")
_UNSAFE = re.compile(r"[^\w.\- ]+")
MAX_ZIP_MEMBERS = 2_000


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
    """The reader's own zip checks (contract/docx_in.py), with the page's lower limits: declared
    sizes and part count, nothing inflated. A DTD is refused by the reader as it parses."""
    from legalbuild.contract.docx_in import checked_archive

    try:
        checked_archive(
            path.read_bytes(),
            path.name,
            max_parts=MAX_ZIP_MEMBERS,
            max_part_bytes=limits.max_unpacked,
            max_total_bytes=limits.max_unpacked,
        ).close()
    except DataError as exc:
        status = 413 if "zip bomb" in exc.message or "parts (" in exc.message else 422
        raise Refused(exc.message, exc.hint, status=status) from None


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
