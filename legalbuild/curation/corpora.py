"""Contract documents: a user's folder of .txt/.md files, or the corpora shipped in PyPI packages.

- `licensedcode`: the licence texts of `licensedcode-data` (ScanCode LicenseDB, database CC-BY-4.0,
  each text belongs to its owner). Only the contract-like categories are used by default (commercial
  EULAs, proprietary-free terms of service, source-available licences): open-source licences repeat
  the same few disclaimers hundreds of times.
- `nda_review`: the NDA templates and sample of `nda-review-cli` (MIT), among them the Common Paper
  Mutual NDA v1.0 (CC BY 4.0); cover-page placeholders are filled with neutral example values.

Packaged files are found through importlib (never a hard-coded site-packages path).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from legalbuild.errors import DataError

LICENSEDCODE_CATEGORIES = ("Commercial", "Proprietary Free", "Source-available")
NDA_REVIEW_FILES = (
    "templates/common_paper_mutual_nda.md",
    "templates/mutual_nda.md",
    "templates/one_way_out_nda.md",
    "tests/fixtures/sample_nda.txt",
)
NDA_PLACEHOLDERS = {
    "purpose": "evaluating a potential software integration partnership",
    "effective_date": "1 March 2024",
    "governing_law": "Delaware",
    "party_a": "Northwind Analytics, Inc.",
    "party_b": "Contoso Systems LLC",
    "party_a_address": "100 Main Street, Wilmington, DE",
    "party_b_address": "200 Market Street, San Francisco, CA",
    "disclosing_party": "Northwind Analytics, Inc.",
    "receiving_party": "Contoso Systems LLC",
    "disclosing_party_address": "100 Main Street, Wilmington, DE",
    "receiving_party_address": "200 Market Street, San Francisco, CA",
}

LICENCES = {
    "licensedcode": {
        "licence": "CC-BY-4.0 (database); each text keeps its owner's licence",
        "attribution": "Copyright (c) nexB Inc. and others. ScanCode LicenseDB (licensedcode-data "
        "32.1.0), CC-BY-4.0, https://github.com/nexB/scancode-toolkit. Each licence text belongs to "
        "its owner; its ScanCode key and owner are listed per document.",
    },
    "nda_review": {
        "licence": "MIT (nda-review-cli); Common Paper Mutual NDA v1.0: CC-BY-4.0",
        "attribution": "nda-review-cli 0.5.5, Copyright (c) 2026 Baher Al Hakim, MIT. Common Paper "
        "Mutual Non-Disclosure Agreement (Version 1.0) free to use under CC BY 4.0, "
        "https://commonpaper.com/standards/mutual-nda/1.0",
    },
}


@dataclass(frozen=True)
class Document:
    doc_id: str  # "<source>:<name>": the split group of every pair made from it
    source: str
    text: str
    domain: str  # which playbooks may review it: software | nda | any
    path: Path
    licence: str = ""  # this text's own licence/owner where known (licensedcode key, owner)


def corpus_source_name(corpus) -> str:
    return corpus.name or corpus.kind


def corpus_files(corpus, base_dir: Path) -> list[Path]:
    """The files whose bytes a corpus's documents come from (for the cache key)."""
    files = [doc.path for doc in load_corpus(corpus, base_dir)]
    if corpus.kind == "licensedcode":
        files.append(licensedcode_cc_by_file())
    return files


def load_corpus(corpus, base_dir: Path) -> list[Document]:
    """The documents of one `[[curate.corpora]]` entry, in a stable order."""
    source = corpus_source_name(corpus)
    if corpus.kind == "folder":
        docs = _folder_documents(corpus, base_dir, source)
    elif corpus.kind == "licensedcode":
        docs = _licensedcode_documents(source)
    else:
        docs = _nda_review_documents(source)
    if corpus.max_documents is not None:
        # a stable pick that does not favour the alphabet's start
        docs = sorted(docs, key=lambda d: hashlib.sha256(d.doc_id.encode()).hexdigest())[
            : corpus.max_documents
        ]
        docs.sort(key=lambda d: d.doc_id)
    return docs


# ------------------------------------------------------------------------------------ folder
def _folder_documents(corpus, base_dir: Path, source: str) -> list[Document]:
    if not corpus.path:
        raise DataError(f'[curate] corpus {source!r}: kind = "folder" needs `path`')
    root = Path(corpus.path).expanduser()
    root = root if root.is_absolute() else (base_dir / root).resolve()
    if not root.is_dir():
        raise DataError(
            f"{root}: contract folder not found", hint="`path` is relative to the recipe's folder"
        )
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".md")
    )
    if not files:
        raise DataError(f"{root}: no .txt or .md contract in this folder")
    docs = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                hint="re-save it as UTF-8",
            ) from None
        rel = path.relative_to(root).as_posix()
        docs.append(Document(f"{source}:{rel}", source, text, "any", path, corpus.licence or ""))
    return docs


# ------------------------------------------------------------------------------ licensedcode
def licensedcode_dir() -> Path:
    try:
        dist = importlib.metadata.distribution("licensedcode-data")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            'corpus kind "licensedcode" needs the licensedcode-data package',
            hint="pip install 'legalbuild[data]' (or licensedcode-data==32.1.0)",
        ) from None
    return Path(str(dist.locate_file("licensedcode/data/licenses")))


def licensedcode_cc_by_file() -> Path:
    return licensedcode_dir().parent / "cc-by-4.0.LICENSE"


_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)


def _licensedcode_documents(source: str) -> list[Document]:
    docs = []
    for path in sorted(licensedcode_dir().glob("*.LICENSE")):
        text = path.read_text(encoding="utf-8", errors="replace")
        m = _FRONT_MATTER.match(text)
        meta = _flat_yaml(m.group(1)) if m else {}
        if (
            meta.get("category") not in LICENSEDCODE_CATEGORIES
            or meta.get("is_deprecated") == "yes"
        ):
            continue
        if meta.get("language", "en") != "en":
            continue
        licence = f"{meta.get('spdx_license_key') or meta.get('key')} (owner: {meta.get('owner', 'unknown')})"
        body = text[m.end() :] if m else text
        docs.append(Document(f"{source}:{path.stem}", source, body, "software", path, licence))
    return docs


def _flat_yaml(front: str) -> dict[str, str]:
    """The top-level `key: value` lines of a front matter (enough for key/category/owner)."""
    out = {}
    for line in front.splitlines():
        if ":" in line and not line.startswith((" ", "-")):
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip().strip("'\"")
    return out


# -------------------------------------------------------------------------------- nda_review
def nda_review_root() -> Path:
    try:
        dist = importlib.metadata.distribution("nda-review-cli")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            'corpus kind "nda_review" needs the nda-review-cli package',
            hint="pip install 'legalbuild[data]' (or nda-review-cli==0.5.5)",
        ) from None
    return Path(str(dist.locate_file("")))


def _nda_review_documents(source: str) -> list[Document]:
    root = nda_review_root()
    docs = []
    for rel in NDA_REVIEW_FILES:
        path = root / rel
        if not path.is_file():
            raise DataError(
                f"{path}: missing from the installed nda-review-cli",
                hint="reinstall nda-review-cli==0.5.5",
            )
        text = re.sub(
            r"\{\{(\w+)\}\}",
            lambda m: NDA_PLACEHOLDERS.get(m.group(1), m.group(0)),
            path.read_text(encoding="utf-8"),
        )
        licence = "CC-BY-4.0 (Common Paper)" if "common_paper" in rel else "MIT (nda-review-cli)"
        docs.append(Document(f"{source}:{Path(rel).stem}", source, text, "nda", path, licence))
    return docs
