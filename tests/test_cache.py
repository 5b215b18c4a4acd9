"""The store: entries appear atomically, verify catches corruption, dead builds leave nothing complete."""

from __future__ import annotations

import os
import subprocess
import sys

from legalbuild.cache import Store
from legalbuild.lock import diff_inputs, flatten


def test_entry_appears_only_on_commit(tmp_path):
    store = Store(tmp_path)
    tmp = store.new_tmp("normalize", "k" * 64)
    (tmp / "out" / "train.jsonl").write_text("{}\n")
    assert not store.has("normalize", "k" * 64)
    assert list(store.entries()) == []
    store.commit(tmp, "normalize", "k" * 64, {"stage": "normalize"})
    assert store.has("normalize", "k" * 64)
    assert store.manifest("normalize", "k" * 64)["outputs"].keys() == {"train.jsonl"}
    assert not tmp.exists()


def test_verify_reports_changed_missing_and_extra_files(tmp_path):
    store = Store(tmp_path)
    tmp = store.new_tmp("s", "a" * 64)
    (tmp / "out" / "x.txt").write_text("x")
    (tmp / "out" / "y.txt").write_text("y")
    store.commit(tmp, "s", "a" * 64, {})
    assert store.verify("s", "a" * 64) == []
    out = store.out_dir("s", "a" * 64)
    (out / "x.txt").write_text("tampered")
    (out / "y.txt").unlink()
    (out / "z.txt").write_text("new")
    assert store.verify("s", "a" * 64) == ["missing: y.txt", "changed: x.txt", "unexpected: z.txt"]


def test_a_killed_builder_leaves_no_entry_and_its_temp_is_cleaned(tmp_path):
    # A real process starts an entry and is killed before committing (SIGKILL: no cleanup runs).
    code = (
        "import os, sys, time\n"
        "from legalbuild.cache import Store\n"
        f"s = Store({str(tmp_path)!r})\n"
        "t = s.new_tmp('train', 'b' * 64)\n"
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
    assert not store.has("train", "b" * 64) and list(store.entries()) == []
    assert store.clean_tmp() == 1
    assert not os.path.exists(tmp_dir)


def test_force_replaces_an_entry(tmp_path):
    store = Store(tmp_path)
    for content in ("old", "new"):
        tmp = store.new_tmp("s", "c" * 64)
        (tmp / "out" / "f").write_text(content)
        store.commit(tmp, "s", "c" * 64, {})
    assert (store.out_dir("s", "c" * 64) / "f").read_text() == "new"
    assert [e.key for e in store.entries()] == ["c" * 64]


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
    tmp = store.new_tmp("merge", "d" * 64)
    (tmp / "out" / "merge.json").write_text('{"ok": false}')
    kept = store.keep_failed(tmp, "merge", "d" * 64)
    assert (kept / "merge.json").read_text() == '{"ok": false}'
    assert not store.has("merge", "d" * 64) and not tmp.exists()
