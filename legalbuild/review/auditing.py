"""Auditing uploads in the background, one review at a time (they share the one model server),
with `legalbuild audit`'s machinery: the contract read and split again from the kept upload
(contract/run.py `prepare`), the questions and the concurrent client (`conduct`, whose `progress`
hook hands each answer to the review as it arrives: written to results.jsonl, counted for the
page). A review interrupted by a restart resumes with the clauses not yet answered.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from pathlib import Path
from typing import Any

from legalbuild.contract.record import clause_row, summary_of
from legalbuild.errors import LegalbuildError
from legalbuild.review.store import ACTIVE, Review
from legalbuild.review.uploads import Limits

log = logging.getLogger("legalbuild.review")


@dataclasses.dataclass
class Target:
    """Who answers: the recipe (system prompt, playbooks, model name, key variable) and the URL
    of its server (attached to, or started for the page)."""

    recipe: Path
    url: str
    model: str | None = None
    constrained: bool = False
    concurrency: int = 8
    retries: int = 2
    max_tokens: int = 512


class Auditor:
    """A daemon worker that audits queued reviews in turn (a daemon: Ctrl-C on the page ends it
    with the process; the review is marked interrupted at the next start and resumes)."""

    def __init__(self, target: Target, limits: Limits):
        self.target = target
        self.limits = limits
        self.progress: dict[str, tuple[int, int]] = {}  # review id -> (answered, clauses)
        self.jobs: dict[str, Any] = {}  # review id -> its contract read and split
        self._queue: queue.Queue[Review] = queue.Queue()
        threading.Thread(target=self._work, name="review-auditor", daemon=True).start()

    def submit(self, review: Review) -> None:
        review.update(status="queued", error=None)
        self._queue.put(review)

    def state(self, review: Review) -> dict[str, Any]:
        meta = review.meta
        total = meta.get("total", 0)
        if review.id in self.progress:
            done, total = self.progress[review.id]
        else:  # answers kept on disk (an audit interrupted by a restart keeps its answers)
            done = sum(r is not None for r in review.results(total))
        return {
            "status": meta.get("status"),
            "done": done,
            "total": total,
            "error": meta.get("error"),
        }

    def _work(self) -> None:
        while True:
            review = self._queue.get()
            try:
                self.audit(review)
            except LegalbuildError as exc:
                review.update(status="failed", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - the page reports it; the worker goes on
                log.exception("review %s failed", review.id)
                review.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            finally:
                self.progress.pop(review.id, None)

    def audit(self, review: Review) -> None:
        """Ask about every clause of the review not answered yet, then write its record."""
        from legalbuild.contract.run import AuditSettings, Job, conduct, resolve

        meta = review.update(status="running")
        job = self.job(review)
        results = review.results(len(job.clauses))
        missing = [i for i, r in enumerate(results) if r is None]
        answered = len(job.clauses) - len(missing)
        self.progress[review.id] = (answered, len(job.clauses))
        t = self.target
        settings = AuditSettings(
            t.recipe, meta.get("playbook"), False, t.constrained, t.concurrency, t.retries,
            t.max_tokens,
        )  # fmt: skip
        asked = resolve(t.recipe, t.model, t.url, meta.get("playbook"), serve=False)
        part = Job(job.document, [job.clauses[i] for i in missing], job.found, [], job.source)

        def on_done(i: int, result: dict[str, Any]) -> None:
            review.add_result(missing[i], result)
            results[missing[i]] = result
            done, total = self.progress[review.id]
            self.progress[review.id] = (done + 1, total)

        record, outcome = conduct(part, asked, settings, progress=lambda ask: ask(on_done))
        rows = [clause_row(c, r) for c, r in zip(job.clauses, results, strict=True)]
        record.update(clauses=rows, summary=summary_of(rows))
        record["document"]["name"] = meta["file"]
        review.save_record(record)
        status = "interrupted" if outcome.interrupted else "done"
        review.update(status=status, done=sum(r is not None for r in results))

    def job(self, review: Review):
        """The review's contract read and split (kept in memory: the page asks often)."""
        from legalbuild.review.uploads import read_upload

        if review.id not in self.jobs:
            self.jobs[review.id] = read_upload(review.upload, self.limits)
        return self.jobs[review.id]

    def current(self, review: Review) -> dict[str, Any]:
        """The audit record when the audit has finished, else one made of the answers so far
        (document and clauses: what the page shows)."""
        record = review.record
        if record is not None and review.meta.get("status") not in ACTIVE:
            return record
        job = self.job(review)
        results = review.results(len(job.clauses))
        rows = [clause_row(c, r) for c, r in zip(job.clauses, results, strict=True)]
        document = {"name": review.meta["file"], "unit": job.document.unit}
        return {"document": document, "clauses": rows, "summary": summary_of(rows)}
