"""Reviews on disk: each one a folder that holds the upload, the model's answers as they arrive,
the audit record and the reviewer's decisions, so a review reopens after a restart.

    <root>/.legalbuild-reviews       marks a folder legalbuild made (nothing else is written into)
    <root>/<id>/review.json          name, file, playbook, status, clause counts, error
    <root>/<id>/upload/<file>        the contract as uploaded (a sanitised name)
    <root>/<id>/results.jsonl        one line per answered clause, appended as answers arrive
    <root>/<id>/audit.json           the audit record (schema contract/audit.schema.json)
    <root>/<id>/decisions.json       per finding: accepted (with the clause text) or rejected
    <root>/<id>/out/                 the downloads, written on request
    <root>/.new-<id>/                an upload in progress; renamed to <id> once read

The root is the cache's `reviews/` folder or one the user names: an existing folder is used only
when it is empty or carries the marker. Only names of the forms above are ever written or removed.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any

from legalbuild.errors import LegalbuildError
from legalbuild.files import write_replacing

MARKER = ".legalbuild-reviews"
MARKER_TEXT = "A folder of legalbuild reviews (legalbuild review); legalbuild writes only here.\n"
REVIEW_ID = re.compile(r"r-\d{8}-\d{6}-[0-9a-f]{8}")
NEW_PREFIX = ".new-"
ACTIVE = ("queued", "running")  # a review in these states when the server stopped was interrupted


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_json_file(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    write_replacing(path, lambda p: p.write_text(text, encoding="utf-8"))


def read_json_file(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


class Review:
    """One review's folder. Writes are atomic (temp file, rename); `lock` serialises them."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.id = folder.name
        self.lock = threading.RLock()

    @property
    def meta(self) -> dict[str, Any]:
        return read_json_file(self.folder / "review.json", {})

    def update(self, **fields: Any) -> dict[str, Any]:
        with self.lock:
            meta = {**self.meta, **fields}
            write_json_file(self.folder / "review.json", meta)
            return meta

    @property
    def upload(self) -> Path:
        return self.folder / "upload" / self.meta["file"]

    def results(self, total: int) -> list[dict[str, Any] | None]:
        """The answers received so far, by clause position (None: not answered)."""
        out: list[dict[str, Any] | None] = [None] * total
        path = self.folder / "results.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut short by a crash: that clause is asked again
                    continue
                if 0 <= entry["position"] < total:
                    out[entry["position"]] = entry["result"]
        return out

    def add_result(self, position: int, result: dict[str, Any]) -> None:
        line = json.dumps({"position": position, "result": result}, ensure_ascii=False)
        with self.lock, (self.folder / "results.jsonl").open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    @property
    def record(self) -> dict[str, Any] | None:
        return read_json_file(self.folder / "audit.json")

    def save_record(self, record: dict[str, Any]) -> None:
        with self.lock:
            write_json_file(self.folder / "audit.json", record)

    @property
    def decisions(self) -> dict[str, dict[str, Any]]:
        return read_json_file(self.folder / "decisions.json", {})

    def save_decisions(self, decisions: dict[str, dict[str, Any]]) -> None:
        with self.lock:
            write_json_file(self.folder / "decisions.json", decisions)

    @property
    def out_dir(self) -> Path:
        out = self.folder / "out"
        out.mkdir(exist_ok=True)
        return out


class ReviewStore:
    """The folder of reviews; refuses one legalbuild did not make (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        self._reviews: dict[str, Review] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, root: Path) -> ReviewStore:
        store = cls(root)
        store.claim()
        store.recover()
        return store

    def claim(self) -> None:
        root = self.root
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            raise LegalbuildError(
                f"{root}: is not a folder (a file or a symbolic link); reviews need a folder",
                hint="name a new or empty folder with --reviews",
            )
        marker = root / MARKER
        if root.exists() and not marker.is_file() and any(root.iterdir()):
            raise LegalbuildError(
                f"{root}: a folder legalbuild did not make (not empty, no {MARKER}); reviews "
                "are never written into it",
                hint="name a new or empty folder with --reviews",
            )
        root.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            marker.write_text(MARKER_TEXT, encoding="utf-8")

    def recover(self) -> None:
        """After a restart: uploads cut short are removed, audits that were running are marked
        interrupted (their answers so far are kept)."""
        import shutil

        for path in self.root.iterdir():
            new = path.name.startswith(NEW_PREFIX) and REVIEW_ID.fullmatch(path.name[5:])
            if new and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        for review in self.all():
            if review.meta.get("status") in ACTIVE:
                review.update(status="interrupted")

    def all(self) -> list[Review]:
        """Every review, newest first."""
        names = [
            p.name
            for p in self.root.iterdir()
            if REVIEW_ID.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
        ]
        found = [self.get(n) for n in sorted(names, reverse=True)]
        return [r for r in found if r is not None]

    def get(self, review_id: str) -> Review | None:
        if not REVIEW_ID.fullmatch(review_id):
            return None
        with self._lock:
            if review_id not in self._reviews:
                folder = self.root / review_id
                if not (folder / "review.json").is_file() or folder.is_symlink():
                    return None
                self._reviews[review_id] = Review(folder)
            return self._reviews[review_id]

    def new_folder(self) -> tuple[str, Path]:
        """(id, a fresh `.new-<id>` folder with `upload/`) for an upload in progress."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        review_id = f"r-{stamp}-{secrets.token_hex(4)}"
        folder = self.root / f"{NEW_PREFIX}{review_id}"
        (folder / "upload").mkdir(parents=True)
        return review_id, folder

    def commit(self, review_id: str, folder: Path, meta: dict[str, Any]) -> Review:
        write_json_file(folder / "review.json", {"id": review_id, "created": now(), **meta})
        os.rename(folder, self.root / review_id)
        review = self.get(review_id)
        assert review is not None
        return review
