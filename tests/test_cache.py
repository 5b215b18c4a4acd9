"""The store: entries appear atomically, verify and readers catch corruption (also with the mtime
kept), gc deletes only what legalbuild wrote, dead builds leave nothing complete and their temp
folders go at the next clean-up, never a live builder's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import data_rows, flip_byte_keeping_mtime

from legalbuild.engine import maintenance, pipeline
from legalbuild.engine.cache import MARKER, NotAStoreError, Store, StrayError
from legalbuild.engine.context import VerifiedInputs
from legalbuild.engine.lock import flatten
from legalbuild.engine.reasons import diff_inputs
from legalbuild.errors import CacheCorruptError
from legalbuild.hashing import file_digest

K1, K2, K3, K4, K5 = (c * 64 for c in "12345")


def test_entry_appears_only_on_commit(tmp_path):
    store = Store(tmp_path)
    tmp = store.new_tmp("normalize", K1)
    (tmp / "out" / "train.jsonl").write_text("{}\n")
    assert not store.has("normalize", K1)
    assert list(store.entries()) == []
    store.commit(tmp, "normalize", K1, {"stage": "normalize"})
    assert store.has("normalize", K1)
    assert store.manifest("normalize", K1)["outputs"].keys() == {"train.jsonl"}
    assert not tmp.exists()


def test_verify_reports_changed_missing_and_extra_files(tmp_path):
    store = Store(tmp_path)
    tmp = store.new_tmp("eval", K2)
    (tmp / "out" / "x.txt").write_text("x")
    (tmp / "out" / "y.txt").write_text("y")
    store.commit(tmp, "eval", K2, {})
    assert store.verify("eval", K2) == []
    out = store.out_dir("eval", K2)
    (out / "x.txt").write_text("tampered")
    (out / "y.txt").unlink()
    (out / "z.txt").write_text("new")
    assert store.verify("eval", K2) == ["missing: y.txt", "changed: x.txt", "unexpected: z.txt"]


def test_a_killed_builder_leaves_no_entry_and_its_temp_is_cleaned(tmp_path):
    # A real process starts an entry and is killed before committing (SIGKILL: no cleanup runs).
    code = (
        "import os, sys, time\n"
        "from legalbuild.engine.cache import Store\n"
        f"s = Store({str(tmp_path)!r})\n"
        f"t = s.new_tmp('train', {K3!r})\n"
        "(t / 'out' / 'half-written.bin').write_bytes(b'0' * 1000)\n"
        "print(t, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    tmp_dir = proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    store = Store(tmp_path)
    assert os.path.isdir(tmp_dir)
    assert not store.has("train", K3) and list(store.entries()) == []
    assert len(store.clean_tmp()) == 1
    assert not os.path.exists(tmp_dir)


def test_force_replaces_an_entry(tmp_path):
    store = Store(tmp_path)
    for content in ("old", "new"):
        tmp = store.new_tmp("eval", K4)
        (tmp / "out" / "f").write_text(content)
        store.commit(tmp, "eval", K4, {})
    assert (store.out_dir("eval", K4) / "f").read_text() == "new"
    assert [e.key for e in store.entries()] == [K4]


def test_lock_inputs_flatten_and_diff_readably():
    old = flatten(
        {"lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}, "upstream": {"base": "0" * 64}}
    )
    new = flatten(
        {"lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]}, "upstream": {"base": "1" * 64}}
    )
    assert old["lora.target_modules"] == "q_proj,v_proj"
    assert diff_inputs(old, new) == [
        "lora.r: 8 -> 16",
        "upstream.base: 000000000000 -> 111111111111",
    ]


def test_a_failed_build_is_kept_for_inspection_not_committed(tmp_path):
    store = Store(tmp_path)
    tmp = store.new_tmp("merge", K5)
    (tmp / "out" / "merge.json").write_text('{"ok": false}')
    kept = store.keep_failed(tmp, "merge", K5)
    assert (kept / "merge.json").read_text() == '{"ok": false}'
    assert not store.has("merge", K5) and not tmp.exists()


# ------------------------------------------------------------------- the cache must not lie
def _entry(store: Store, stage: str, key: str, files: dict[str, bytes]) -> None:
    tmp = store.new_tmp(stage, key)
    for rel, data in files.items():
        (tmp / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "out" / rel).write_bytes(data)
    store.commit(tmp, stage, key, {"stage": stage})


def test_a_flipped_byte_with_its_mtime_kept_is_caught_by_verify_and_by_readers(tmp_path):
    store = Store(tmp_path / "store")
    _entry(store, "train", K1, {"adapter/adapter_model.safetensors": os.urandom(3 << 20)})
    path = store.out_dir("train", K1) / "adapter" / "adapter_model.safetensors"
    memoised = file_digest(path)  # what `plan` does: (path, size, mtime) -> digest, kept on disk
    flip_byte_keeping_mtime(path, 2_000_000)
    assert file_digest(path) == memoised  # the memo is fooled by design: it only speeds up plan
    assert store.verify("train", K1) == ["changed: adapter/adapter_model.safetensors"]
    inputs = VerifiedInputs(store, {"train": K1}, "merge")
    assert "train" in inputs and list(inputs) == ["train"]  # asking what is there reads nothing
    with pytest.raises(CacheCorruptError, match=r"train entry 111111111111 that merge reads"):
        inputs["train"]
    flip_byte_keeping_mtime(path, 2_000_000)  # flipped back: the same bytes pass again
    assert inputs["train"] == store.out_dir("train", K1)


def test_export_refuses_bytes_that_differ_from_the_cache(tmp_path):
    from legalbuild.export import MANIFEST_NAME, export_artifact
    from legalbuild.export.destination import PARTIAL_MARKER

    store = Store(tmp_path / "store")
    model = {"model/config.json": b"{}", "model/model.safetensors": os.urandom(2 << 20)}
    _entry(store, "merge", K5, {**model, "merge.json": b"{}"})
    merged = store.out_dir("merge", K5) / "model"
    expected = store.output_digests("merge", K5, under="model")
    assert set(expected) == {"config.json", "model.safetensors"}
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    stale = tmp_path / f".ok.partial-{int(gone.stdout)}-0-0badcafe"  # what a killed export left
    (stale / "export").mkdir(parents=True)
    (stale / PARTIAL_MARKER).write_text(f"{int(gone.stdout)}-0\n")
    (stale / "export" / "model.safetensors").write_bytes(b"half")
    good = export_artifact(merged, tmp_path / "ok", {}, expected=expected)
    assert not stale.exists()
    files = json.loads((good / MANIFEST_NAME).read_text())["artifact"]["files"]
    assert files["model.safetensors"]["sha256"] == expected["model.safetensors"]
    flip_byte_keeping_mtime(merged / "model.safetensors", 1_500_000)
    with pytest.raises(CacheCorruptError, match="nothing exported: changed: model.safetensors"):
        export_artifact(merged, tmp_path / "bad", {}, expected=expected)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.partial-*"))


# ---------------------------------------------------------- gc deletes only what it owns
def test_gc_removes_stale_entries_and_nothing_legalbuild_did_not_write(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    _entry(store, "normalize", K1, {"train.jsonl": b"{}\n"})  # current
    _entry(store, "normalize", K2, {"train.jsonl": b"{}\n"})  # stale
    outside = (
        tmp_path / "outside"
    )  # looks like an entry, lives elsewhere: linked in, never followed
    (outside / "out").mkdir(parents=True)
    (outside / "out" / "precious.txt").write_text("mine")
    (outside / "manifest.json").write_text("{}")
    (root / "entries" / "normalize" / K3).symlink_to(outside)
    (root / "entries" / "train").symlink_to(tmp_path / "outside")  # a symlinked stage folder
    stale_work = root / "work" / f"normalize-{K2}"
    stale_work.mkdir(parents=True)
    (root / "work" / f"normalize-{K4}").symlink_to(outside)  # a legalbuild name, but a link
    user = [root / "tmp" / "my-notes", root / "work" / "important", root / "failed" / "keep-me"]
    for d in [*user, root / "work" / "normalize"]:  # a name without a key crashed gc before
        d.mkdir(parents=True)
        (d / "file.txt").write_text("user data")

    result = maintenance.gc(store, {("normalize", K1)})

    assert [(s, k) for s, k, _ in result.removed] == [("normalize", K2)]
    assert result.scratch == [f"work/normalize-{K2}"] and not stale_work.exists()
    assert store.has("normalize", K1)
    assert (outside / "out" / "precious.txt").read_text() == "mine"
    assert (root / "entries" / "normalize" / K3).is_symlink()
    assert (root / "entries" / "train").is_symlink()
    assert (root / "work" / f"normalize-{K4}").is_symlink()
    assert all((d / "file.txt").read_text() == "user data" for d in user)
    skipped = "\n".join(result.skipped)
    for name in (f"entries/normalize/{K3} (a symlink", "entries/train (a symlink", "tmp/my-notes"):
        assert name in skipped, skipped
    with pytest.raises(StrayError, match="symlink"):
        store.remove("normalize", K3)  # what `clean` calls: refused, the link stays
    assert (root / "entries" / "normalize" / K3).is_symlink() and outside.is_dir()


def test_a_folder_that_is_not_a_legalbuild_cache_is_refused(tmp_path):
    photos = tmp_path / "photos"
    (photos / "tmp").mkdir(parents=True)
    (photos / "tmp" / "draft.txt").write_text("user data")
    (photos / "holiday.jpg").write_bytes(b"\xff\xd8")
    store = Store(photos)
    with pytest.raises(NotAStoreError, match="not a legalbuild cache.*holiday.jpg"):
        maintenance.gc(store, set())
    with pytest.raises(NotAStoreError, match="holiday.jpg"):
        maintenance.gc(store, set(), dry_run=True)
    with pytest.raises(NotAStoreError):
        store.new_tmp("normalize", K1)
    assert sorted(p.name for p in photos.iterdir()) == ["holiday.jpg", "tmp"]
    assert (photos / "tmp" / "draft.txt").exists()


def test_an_unmarked_store_laid_out_by_legalbuild_is_adopted(tmp_path):
    root = tmp_path / "old-store"
    _entry(Store(root), "normalize", K1, {"train.jsonl": b"{}\n"})
    (root / MARKER).unlink()  # as a legalbuild from before the marker left it
    (root / "hash-memo.json").write_text("{}")
    (root / "code-memo.json").write_text("{}")  # plan's memo of the imports of the code
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    dry = maintenance.gc(Store(root), set(), dry_run=True)
    assert [k for _, k, _ in dry.removed] == [K1]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # not even the marker
    result = maintenance.gc(Store(root), set())
    assert [k for _, k, _ in result.removed] == [K1]
    assert "created by legalbuild" in (root / MARKER).read_text()
    assert Store(tmp_path / "new").is_marked() is False  # nothing is written until a build or gc


# ------------------------------------------------------------------------------ temp folders
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times need /proc")
def test_temp_folders_go_once_their_builder_is_gone_not_before(tmp_path):
    code = (
        "import time\n"
        "from legalbuild.engine.cache import Store\n"
        f"t = Store({str(tmp_path)!r}).new_tmp('train', {K3!r})\n"
        "print(t, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    live = Path(proc.stdout.readline().strip())
    stage, key16, pid, start, _rand = live.name.split("-")
    assert (stage, key16, int(pid)) == ("train", K3[:16], proc.pid)
    # the same pid with another start time: a builder that died and whose pid was reused since
    reused = live.with_name(f"{stage}-{key16}-{pid}-{int(start) + 1}-0badc0de")
    reused.mkdir()
    store = Store(tmp_path)
    mine = store.new_tmp("train", K1)
    foreign = tmp_path / "tmp" / "my-notes"
    foreign.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tmp_path / "tmp" / f"train-{K3[:16]}-999999999-1-0badc0de"  # a dead owner, but a link
    link.symlink_to(outside)
    try:
        assert store.clean_tmp() == [reused.name]
        assert live.is_dir() and mine.is_dir() and foreign.is_dir() and link.is_symlink()
        proc.kill()
        deadline = time.monotonic() + 10  # killed, not yet reaped: a zombie owns nothing
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert store.clean_tmp() == [live.name]
    finally:
        proc.kill()
        proc.wait()
    assert mine.is_dir() and foreign.is_dir() and outside.is_dir()


def test_another_tools_cache_folder_is_not_taken_over(tmp_path):
    other = tmp_path / "other-cache"
    other.mkdir()
    (other / MARKER).write_text(
        "Signature: 8a477f597d28d172789f06886806bc55\n# made by another tool\n"
    )
    with pytest.raises(NotAStoreError, match="CACHEDIR.TAG"):
        Store(other).claim()
    assert "another tool" in (other / MARKER).read_text()


def test_quick_check_finds_what_changed_without_rehashing_unchanged_files(tmp_path):
    store = Store(tmp_path)
    tmp = store.new_tmp("eval", K2)
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (tmp / "out" / name).write_text(name * 10)
    store.commit(tmp, "eval", K2, {})
    assert store.manifest("eval", K2)["stats"]["a.txt"][0] == 50
    out = store.out_dir("eval", K2)
    assert store.quick_check("eval", K2) == []
    (out / "a.txt").write_text("A" * 50)  # same size, new time: re-hashed, caught
    (out / "b.txt").write_text("short")  # another size
    (out / "c.txt").unlink()
    (out / "e.txt").write_text("new")
    os.utime(out / "d.txt", ns=(0, 0))  # only the time changed: re-hashed, same bytes, fine
    assert store.quick_check("eval", K2) == [
        "missing: c.txt", "unexpected: e.txt", "changed: a.txt",
        "changed: b.txt (5 bytes, 50 recorded)",
    ]  # fmt: skip


def test_build_never_hands_on_a_corrupted_cached_entry(tmp_path):
    """A cached entry whose files changed is refused by the next build (exit 8, naming the file
    and the command that rebuilds it), and one changed with its time put back is reported as
    not re-hashed, which `verify` then catches."""
    (tmp_path / "d.jsonl").write_text(data_rows(30))
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[project]\nname = "t"\n[[data.sources]]\nname = "d"\npath = "d.jsonl"\n'
        "[data]\ntarget_min_pairs = 1\n"
    )
    store, logs = Store(tmp_path / "cache"), []
    loaded = pipeline.Loaded.from_path(recipe)
    pipeline.build(loaded, store, until="normalize", log=logs.append)
    out = store.out_dir("normalize", loaded.nodes["normalize"].key)
    train = out / "train.jsonl"

    flip_byte_keeping_mtime(train, 10)  # a disk's bit flip: the cheap check cannot see it
    pipeline.build(loaded, store, until="normalize", log=logs.append)
    assert any("normalize  cached" in line and "(sizes checked)" in line for line in logs)
    assert "not re-hashed: `legalbuild verify` re-reads every byte" in logs[-1]
    assert store.verify("normalize", loaded.nodes["normalize"].key) == ["changed: train.jsonl"]

    train.write_bytes(train.read_bytes())  # rewritten: a new modification time
    with pytest.raises(CacheCorruptError, match="changed: train.jsonl") as info:
        pipeline.build(loaded, store, until="normalize", log=logs.append)
    assert info.value.exit_code == 8 and "--force normalize" in info.value.hint
    with open(train, "ab") as f:  # appended: another size, caught without reading it
        f.write(b"{}\n")
    with pytest.raises(CacheCorruptError, match=r"changed: train.jsonl \([\d,]+ bytes"):
        pipeline.build(loaded, store, until="normalize", log=logs.append)
    pipeline.build(loaded, store, until="normalize", force=["normalize"], log=logs.append)
    assert store.quick_check("normalize", loaded.nodes["normalize"].key) == []
