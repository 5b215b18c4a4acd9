"""What every contract reader shares (document.py: text and PDF, docx_in.py: DOCX): the limits of
what is read from an untrusted file, their refusals, and the optional parsers' imports.

Limits, so that a hostile file is refused in seconds with bounded memory: at most 128 MiB of PDF
or DOCX and 16 MiB of text are read (from a file or standard input), and reading stops after
`MAX_UNITS` pages, paragraphs or lines (no contract is that long) or `MAX_CLAUSES` clauses;
`--max-clauses` stops reading long before."""

from __future__ import annotations

from legalbuild.errors import DataError, LegalbuildError

PDF_MAGIC = b"%PDF-"
ZIP_MAGIC = b"PK\x03\x04"
MAX_BINARY_BYTES = 128 * 2**20  # a PDF or DOCX (a contract with scanned pages stays well below)
MAX_TEXT_BYTES = 16 * 2**20  # text: a 1,000-page contract is ~3 MB
MAX_UNITS = {"pdf": 2_000, "docx": 100_000, "text": 500_000}  # pages, paragraphs, lines
UNIT_NAMES = {"pdf": "pages", "docx": "paragraphs", "text": "lines"}
MAX_CLAUSES = 10_000  # clauses one audit asks about (at 8 in flight, hours of a CPU server)


def need(module: str, package: str):
    """`module` imported, or an error naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise LegalbuildError(
            f"this needs the {package} package", hint="pip install 'legalbuild[audit]'"
        ) from None


def too_long(name: str, kind: str) -> DataError:
    return DataError(
        f"{name}: more than {MAX_UNITS[kind]:,} {UNIT_NAMES[kind]}; reading stopped there (no "
        "contract is this long: several documents in one, or not a contract?)",
        hint="--max-clauses N audits the first N clauses; split a longer document",
    )


def check_size(name: str, size: int, limit: int, what: str = "") -> None:
    if size > limit:
        raise DataError(
            f"{name}: more than {limit // 2**20} MiB{what}: legalbuild reads no more of a "
            "contract (a 1,000-page contract is a few MB)",
            hint="give the contract itself; split a longer document into its parts",
        )
