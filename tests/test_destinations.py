"""What `export` and `audit --out` may write over: only what legalbuild can prove it made.

Real files, FIFOs, device nodes (where mknod is allowed), symbolic links and folders under the
test's tmp folder; the export runs through `export_artifact` on a folder shaped like a merged model
(the copy logic does not read the weights) and through the real CLI for the recipe's own folder."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from helpers import REPO, write_contract_docx, write_recipe

from legalbuild.errors import LegalbuildError
from legalbuild.export import MANIFEST_NAME, export_artifact
from legalbuild.export.destination import PARTIAL_MARKER, remove_stale_partials


@pytest.fixture
def merged(tmp_path):
    folder = tmp_path / "cache" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return folder


def user_folder(path):
    path.mkdir()
    (path / "recipe.toml").write_text("[project]\nname = 'mine'\n")
    (path / ".git").mkdir()
    (path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return path


def snapshot(path):
    return sorted(
        (str(p.relative_to(path)), p.read_bytes()) for p in path.rglob("*") if p.is_file()
    )


def legalbuild(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "legalbuild", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


# ------------------------------------------------------------------------------------- export
def test_a_fifo_is_refused_and_left_in_place(merged, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for force in (False, True):
        with pytest.raises(LegalbuildError, match="is a FIFO"):
            export_artifact(merged, fifo, {}, force=force)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_device_node_is_refused_and_left_in_place(merged, tmp_path):
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod is not allowed here (needs CAP_MKNOD)")
    for force in (False, True):
        with pytest.raises(LegalbuildError, match="character device"):
            export_artifact(merged, node, {}, force=force)
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_a_regular_file_is_refused(merged, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(LegalbuildError, match="is a file"):
        export_artifact(merged, target, {}, force=True)
    assert target.read_text() == "mine"


def test_a_symlink_is_never_followed_even_with_force(merged, tmp_path):
    real = user_folder(tmp_path / "project")
    before = snapshot(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(LegalbuildError, match="symbolic link"):
        export_artifact(merged, link, {}, force=True)
    assert snapshot(real) == before and link.is_symlink()


def test_force_refuses_a_user_folder_and_lists_what_would_be_lost(merged, tmp_path):
    folder = user_folder(tmp_path / "project")
    before = snapshot(folder)
    with pytest.raises(LegalbuildError, match="not empty"):
        export_artifact(merged, folder, {})
    with pytest.raises(LegalbuildError) as info:
        export_artifact(merged, folder, {}, force=True)
    assert "recipe.toml" in str(info.value) and ".git" in str(info.value)
    assert snapshot(folder) == before


def test_force_replaces_exactly_a_previous_export(merged, tmp_path):
    dest = tmp_path / "out"
    export_artifact(merged, dest, {"n": 1})
    export_artifact(merged, dest, {"n": 2}, force=True)
    assert json.loads((dest / MANIFEST_NAME).read_text())["n"] == 2
    # one foreign file added to the export: --force now refuses, naming it
    (dest / "notes.md").write_text("my notes")
    with pytest.raises(LegalbuildError, match="notes.md"):
        export_artifact(merged, dest, {"n": 3}, force=True)
    (dest / "notes.md").unlink()
    # a listed file that changed size is not the export any more either
    (dest / "config.json").write_text('{"model_type": "llama", "edited": true}')
    with pytest.raises(LegalbuildError, match="changed since the export"):
        export_artifact(merged, dest, {"n": 3}, force=True)
    assert not list(tmp_path.glob(".out.partial-*"))


def test_an_empty_folder_is_used(merged, tmp_path):
    dest = tmp_path / "empty"
    dest.mkdir()
    export_artifact(merged, dest, {})
    assert (dest / MANIFEST_NAME).is_file() and not (dest / PARTIAL_MARKER).exists()


def test_a_folder_that_looks_like_a_partial_export_is_not_deleted(merged, tmp_path):
    old_style = user_folder(tmp_path / ".out.partial-999999")
    new_style = user_folder(tmp_path / ".out.partial-999999-12-0123abcd")
    ours = tmp_path / ".out.partial-999998-12-89abcdef"  # left by a killed export: marked
    ours.mkdir()
    (ours / PARTIAL_MARKER).write_text("999998-12\n")
    (ours / "model.safetensors").write_bytes(b"half")
    export_artifact(merged, tmp_path / "out", {})
    assert (old_style / "recipe.toml").is_file() and (new_style / "recipe.toml").is_file()
    assert not ours.exists()
    assert remove_stale_partials(tmp_path / "out") == []


def test_export_into_the_recipes_own_folder_is_refused_and_deletes_nothing(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    recipe = write_recipe(project / "recipe.toml")
    (project / "notes.md").write_text("mine")
    before = snapshot(project)
    for args in ((".", "--force"), (".",), (str(project), "--force")):
        proc = legalbuild("export", "recipe.toml", *args, cwd=project)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert str(recipe.name) in proc.stderr or "not empty" in proc.stderr
    assert snapshot(project) == before


# ---------------------------------------------------------------------------------- audit --out
def test_audit_out_equal_to_the_input_is_refused(tmp_path):
    contract = write_contract_docx(tmp_path / "contract.docx")
    before = contract.read_bytes()
    for out in ("contract.docx", "./contract.docx", str(contract)):
        proc = legalbuild("audit", "contract.docx", "--out", out, cwd=tmp_path)
        assert proc.returncode == 3, proc.stderr
        assert "would overwrite it" in proc.stderr and "Traceback" not in proc.stderr
    link = tmp_path / "alias.docx"
    os.link(contract, link)  # the same file under another name
    proc = legalbuild("audit", "contract.docx", "--out", "alias.docx", cwd=tmp_path)
    assert proc.returncode == 3 and "would overwrite it" in proc.stderr
    assert contract.read_bytes() == before


@pytest.mark.parametrize("kind", ["fifo", "symlink", "twice"])
def test_audit_out_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    contract = write_contract_docx(tmp_path / "contract.docx")
    out = tmp_path / "findings.json"
    outs = ["--out", str(out)]
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "symlink":
        (tmp_path / "elsewhere.json").write_text("{}")
        out.symlink_to(tmp_path / "elsewhere.json")
    else:
        outs += ["--out", str(out)]
    proc = legalbuild("audit", str(contract), *outs, cwd=tmp_path)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    expected = {"fifo": "FIFO", "symlink": "symbolic link", "twice": "named twice"}[kind]
    assert expected in proc.stderr
    if kind == "symlink":
        assert (tmp_path / "elsewhere.json").read_text() == "{}" and out.is_symlink()
