"""A child process tree (the vLLM server, a training launcher): spawned as its own process group,
stopped as a whole, and never left running by a signal or an exit of ours.

- `spawn_group` starts the server in its own session (one process group for the API server, its
  engine core and workers); on Linux the leader also gets SIGTERM if we die, even by SIGKILL.
- `stop_signals()` is installed before anything is spawned: SIGINT, SIGTERM and SIGHUP are
  recorded (start-up then stops and raises `StoppedBySignal`) and forwarded to the group once it
  exists; a second signal kills the group outright.
- every handle not yet stopped is stopped at interpreter exit (atexit).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legalbuild.errors import ServeError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StoppedBySignal(ServeError):
    """A stop signal arrived before the server was ready; the server was stopped too."""

    def __init__(self, signum: int):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} during start-up; the vLLM server was stopped too")
        self.exit_code = 128 + signum  # what a shell reports for a death by that signal


@dataclass(eq=False)  # compared by identity: the registry of live handles is a set
class ServerHandle:
    """A running vLLM server: its process (leader of its own process group) and where it listens."""

    process: subprocess.Popen
    base_url: str  # ends in /v1, as the openai client wants it
    served_model_name: str
    api_key: str | None
    log_path: Path
    tail: deque = field(default_factory=lambda: deque(maxlen=80))
    echo: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self.tail)[-lines:])

    def signal_group(self, signum: int) -> None:
        signal_group(self.process.pid, signum)

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM the whole group (vLLM shuts its workers down), SIGKILL whatever is left after
        `grace_s`, and wait until no process of the group remains."""
        code = stop_group(self.process, grace_s)
        _LIVE.discard(self)
        return code


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the process given it binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def signal_group(pgid: int, signum: int) -> None:
    """Send `signum` to every process of group `pgid` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_group(process: subprocess.Popen, grace_s: float = 20.0) -> int | None:
    """Stop the group `process` leads: SIGTERM, SIGKILL after `grace_s`, then wait until no
    process of the group remains. Returns the leader's exit code."""
    signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive(process.pid):
        signal_group(process.pid, signal.SIGKILL)
    return process.returncode


_LIVE: set[ServerHandle] = set()


@atexit.register
def _stop_live_servers() -> None:
    """Backstop for a caller that exits without stopping its server (e.g. `wait=False`)."""
    for handle in list(_LIVE):
        handle.stop(grace_s=5)


def group_alive(pgid: int) -> bool:
    """Does any non-zombie process still belong to process group `pgid`? (/proc on Linux)"""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def spawn_group(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `argv` as the leader of a new session and process group, output piped to us."""
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own session and process group: we signal the whole tree at once
        preexec_fn=_child_setup(),
    )


def _child_setup() -> Callable[[], None] | None:
    """The child's set-up before exec: SIGINT back to its default (a CLI started from a background
    job, by nohup or by some CI runners ignores SIGINT, the child would inherit that and never hear
    the Ctrl-C we forward), then the parent-death signal. Main thread only, like signal handling."""
    if threading.current_thread() is not threading.main_thread():
        return None
    arm = _parent_death_signal()

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if arm is not None:
            arm()

    return setup


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a preexec function that makes the kernel SIGTERM the leader when the thread that
    spawned it dies, so even a SIGKILLed CLI takes its server down (vLLM then stops its engine).
    Only from the main thread (its death is our death); libc is resolved here, in the parent, so
    the child between fork and exec only makes the call."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return _death_signal_arm(os.getpid())


def die_with_parent() -> bool:
    """Linux: this process gets SIGTERM when its parent dies (e.g. a training rank whose launcher
    was killed). False where that cannot be arranged, or the parent is already gone."""
    arm = _death_signal_arm(os.getppid())
    if arm is None or os.getppid() == 1:
        return False
    arm()
    return True


def _death_signal_arm(parent: int) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: nobody will signal
            os._exit(1)

    return arm


def copy_output(
    stream: Any, log_path: Path, tail: deque, on_line: Callable[[str], None] | None = None
) -> None:
    """A child's output, line by line until it closes: its bytes appended to `log_path`, the
    decoded line kept in `tail` (for error messages) and handed to `on_line`."""
    with log_path.open("ab") as log:
        for raw in stream:
            log.write(raw)
            log.flush()
            line = raw.decode("utf-8", "replace").rstrip()
            tail.append(line)
            if on_line is not None:
                on_line(line)


def pump_log(handle: ServerHandle) -> None:
    """Copy the server's output to its log file, keep a tail for error messages, echo on request."""

    def echo(line: str) -> None:
        if handle.echo.is_set():
            print(line, file=sys.stderr, flush=True)

    copy_output(handle.process.stdout, handle.log_path, handle.tail, echo)


# ------------------------------------------------------------------------------------ signals
class StopSignals:
    """The handler of STOP_SIGNALS while a server starts or runs in the foreground."""

    def __init__(self, handle: ServerHandle | None = None):
        self.handle = handle
        self.received: list[int] = []

    def __call__(self, signum: int, _frame: Any) -> None:
        self.received.append(signum)  # no lock taken here (an Event's could deadlock the handler)
        if self.handle is not None:  # vLLM shuts down cleanly on SIGINT and SIGTERM, not SIGHUP
            forward = signum if signum in (signal.SIGINT, signal.SIGTERM) else signal.SIGTERM
            self.handle.signal_group(signal.SIGKILL if len(self.received) > 1 else forward)

    def raise_if_received(self) -> None:
        if self.received:
            raise StoppedBySignal(self.received[0])

    def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or until a stop signal arrives (checked every 0.1 s)."""
        deadline = time.monotonic() + seconds
        while not self.received and time.monotonic() < deadline:
            time.sleep(0.1)


def exit_if_stopped(received: list[int]) -> None:
    """After a foreground child stopped because this process got a stop signal: Ctrl-C goes on as
    KeyboardInterrupt, any other as the exit status a shell gives that signal (128 + its number)."""
    if received:
        if received[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + received[0])


_ACTIVE: list[StopSignals] = []


@contextlib.contextmanager
def stop_signals(handle: ServerHandle | None = None) -> Iterator[StopSignals]:
    """Install the stop-signal handler (main thread only: Python allows no other). Nested uses
    share the outermost one, so start-up and foreground serving have no gap between handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield StopSignals(handle)  # records nothing: only the main thread receives signals
        return
    if _ACTIVE:
        if handle is not None:
            _ACTIVE[0].handle = handle
        yield _ACTIVE[0]
        return
    guard = StopSignals(handle)
    previous = {s: signal.signal(s, guard) for s in STOP_SIGNALS}
    _ACTIVE.append(guard)
    try:
        yield guard
    finally:
        _ACTIVE.clear()
        for s, handler in previous.items():
            signal.signal(s, handler)
