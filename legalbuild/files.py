"""Which paths may be read, and how text files are decoded: the checks every reader shares.

A path a recipe names is read only when it is a regular file (or a folder of them). A FIFO would
block the build forever, `/dev/zero` never ends, files under /proc and /sys lie about their size,
and a broken symbolic link has nothing to read: each is refused with a DataError that names the
path and what it is. `open_regular` re-checks the opened descriptor, so a path swapped for a FIFO
between the check and the open cannot hang a reader either.
"""

from __future__ import annotations

import codecs
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from legalbuild.errors import DataError, LegalbuildError

T = TypeVar("T")
PSEUDO_FILESYSTEMS = ("/proc", "/sys")
_SHOWN_PATH_CHARS = 300  # longer paths are shown head…tail in messages

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def display_path(path: str | Path) -> str:
    """The path as a user would type it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        rel = str(path)
    shown = str(path) if rel.startswith("..") else rel
    if len(shown) > _SHOWN_PATH_CHARS:
        half = _SHOWN_PATH_CHARS // 2
        shown = f"{shown[:half]}…({len(shown):,} characters)…{shown[-half:]}"
    return shown


def check_input_path(
    path: str | Path, *, allow_dir: bool = True, missing_hint: str | None = None
) -> os.stat_result:
    """The stat of a path that may be read (a regular file, or a folder when allowed); DataError else."""
    path = Path(path)
    st = _stat(path, missing_hint)
    _check_kind(path, st, allow_dir)
    real = os.path.realpath(path)
    root = next((r for r in PSEUDO_FILESYSTEMS if real == r or real.startswith(r + "/")), None)
    if root:
        raise DataError(
            f"{display_path(path)}: is under {root}, a pseudo-filesystem whose files change as "
            "they are read",
            hint="copy the data into a regular file and point at that",
        )
    return st


def check_listed_file(path: Path) -> None:
    """`check_input_path` for a file found inside a folder already checked: one lstat unless a link."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is None or stat.S_ISLNK(st.st_mode):
        check_input_path(path, allow_dir=False)
    else:
        _check_kind(path, st, allow_dir=False)


def _stat(path: Path, missing_hint: str | None) -> os.stat_result:
    shown = display_path(path)
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(
                f"{shown}: broken symbolic link (it points to {os.readlink(path)!r}, which does not exist)",
                hint="fix or remove the link",
            ) from None
        raise DataError(f"{shown}: no such file or folder", hint=missing_hint) from None
    except OSError as exc:  # too long a name, permission denied, a loop of links...
        raise DataError(f"{shown}: cannot be read ({exc.strerror or exc})") from None


def _check_kind(path: Path, st: os.stat_result, allow_dir: bool) -> None:
    if stat.S_ISREG(st.st_mode) or (allow_dir and stat.S_ISDIR(st.st_mode)):
        return
    if stat.S_ISDIR(st.st_mode):
        kind = "a folder"
    else:
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
    raise DataError(
        f"{display_path(path)}: is {kind}, not a regular file{' or folder' if allow_dir else ''}",
        hint="legalbuild reads data from regular files only; save the data to a file first",
    )


def tree_files(root: str | Path) -> list[Path]:
    """Every regular file under root, sorted, skipping hidden files and __pycache__. A FIFO, a
    device, a broken link or a path under /proc raises DataError (reading them hangs or crashes)."""
    root = Path(root)
    if os.path.lexists(root):
        check_input_path(root)
    if root.is_file():
        return [root]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        files = [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
        for path in files:
            check_listed_file(path)
        out += files
    return out


def open_regular(path: str | Path, missing_hint: str | None = None) -> BinaryIO:
    """Open a regular file for reading in binary mode; anything else raises DataError, never blocks."""
    check_input_path(path, allow_dir=False, missing_hint=missing_hint)
    try:
        # O_NONBLOCK: opening a FIFO put there since the check returns at once instead of waiting
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise DataError(f"{display_path(path)}: cannot be opened ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{display_path(path)}: is not a regular file (it changed while opened)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular_bytes(path: str | Path, missing_hint: str | None = None) -> bytes:
    with open_regular(path, missing_hint) as f:
        return f.read()


# ------------------------------------------------------------------------------------ decoding
_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def decode_utf8(
    data: bytes, shown: str, error: type[LegalbuildError] = DataError, what: str = "file"
) -> str:
    """Strict UTF-8 text (a UTF-8 byte-order mark is dropped); any other encoding raises `error`
    naming the file, the line and column of the first bad byte, and the command that converts it."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise error(
                f"{shown}: the {what} is {name} text (it starts with a {name} byte-order mark); "
                "legalbuild reads UTF-8",
                hint=f"save it as UTF-8, e.g. `iconv -f {name} -t UTF-8 {shown} > fixed`",
            )
    nul = data.find(b"\x00", 0, 8192)
    if nul >= 0:
        line, col = _line_col(data, nul)
        raise error(
            f"{shown}:{line}:{col}: the {what} holds NUL bytes: it is binary, or UTF-16 text without "
            "a byte-order mark, not UTF-8 text",
            hint=f"point at the text file, or save it as UTF-8 (`iconv -f UTF-16 -t UTF-8 {shown} > fixed`)",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        raise error(
            f"{shown}:{line}:{col}: byte 0x{data[exc.start]:02x} is not valid UTF-8",
            hint="save the file as UTF-8; from Windows-1252/Latin-1 text: "
            f"`iconv -f WINDOWS-1252 -t UTF-8 {shown} > fixed`",
        ) from None


def _line_col(data: bytes, pos: int) -> tuple[int, int]:
    return data.count(b"\n", 0, pos) + 1, pos - (data.rfind(b"\n", 0, pos) + 1) + 1


# ------------------------------------------------------------------------------------- writing
def check_output_file(path: str | Path, inputs: list[str | Path] = ()) -> None:
    """A file the user asked legalbuild to write: refused (LegalbuildError naming it) when it is one
    of the `inputs`, or exists as anything but a regular file (a folder, a symbolic link, a FIFO,
    a device, a socket), which legalbuild never replaces. A regular file is replaced whole."""
    path = Path(path)
    shown = display_path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise LegalbuildError(f"{shown}: cannot be written ({exc.strerror or exc})") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else kind
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else kind
        raise LegalbuildError(
            f"{shown}: exists and is {kind}; legalbuild writes only new or regular files",
            hint="name a new file",
        )
    for source in inputs:
        if str(source) == "-" or not os.path.lexists(source):
            continue
        if os.path.realpath(source) == os.path.realpath(path) or (
            st is not None and os.path.samefile(source, path)
        ):
            raise LegalbuildError(
                f"{shown}: is the input {display_path(source)}; writing it would overwrite it",
                hint="name another output file, e.g. reviewed.docx",
            )


def write_replacing(path: str | Path, write: Callable[[Path], T]) -> T:
    """Call `write(temp)` on a new sibling temp file, then rename it over `path`: a crash or an
    error leaves `path` as it was (and no temp file). Returns what `write` returned."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        result = write(temp)
        os.replace(temp, path)
        return result
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)
