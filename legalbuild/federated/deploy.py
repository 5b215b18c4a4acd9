"""Flower's Deployment Engine on loopback: a SuperLink, one SuperNode per silo and `flwr run`, each
started from the Flower venv as its own process group (legalbuild/processes.py) and stopped as a
whole.

Flower detaches some of its children into sessions of their own (the SuperLink's SuperExec and
the ServerApp; they watch their parent's pid and exit after it). Every process of a federation
carries `LEGALBUILD_FEDERATION=<id>` in its environment, so `stop` also finds and ends any of them
still alive: nothing is left running, whatever order things die in.

Loopback runs `--insecure` (plain HTTP on 127.0.0.1). On real hosts the SuperLink takes
`--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile`, each SuperNode `--root-certificates` and
`--auth-supernode-private-key`, and the SuperLink `--enable-supernode-auth` with the silos'
public keys registered (README, "Federated training").
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

from legalbuild.errors import StageFailedError
from legalbuild.federated.layout import Layout
from legalbuild.processes import copy_output, free_port, signal_group, spawn_group, stop_group

MARKER = "LEGALBUILD_FEDERATION"
LOG_MARK = "legalbuild-federated: "  # the ServerApp's lines meant for the stage log
CONNECTION = "legalbuild"  # the SuperLink connection's name in FLWR_HOME/config.toml

APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "legalbuild-federated"
version = "1.0.0"
description = "legalbuild's federated LoRA training (the code is legalbuild.federated)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "legalbuild"

[tool.flwr.app.components]
serverapp = "legalbuild.federated.server_app:app"
clientapp = "legalbuild.federated.client_app:app"

[tool.flwr.app.config]
spec = ""
"""


class Process:
    """One started process group, its output copied into a log file (a tail kept)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 on_line: Callable[[str], None] | None = None):  # fmt: skip
        self.name, self.log_path = name, log_path
        self.tail: deque[str] = deque(maxlen=40)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = spawn_group(argv, env)
        self.pump = threading.Thread(target=self._pump, args=(on_line,), daemon=True)
        self.pump.start()

    def _pump(self, on_line: Callable[[str], None] | None) -> None:
        copy_output(self.process.stdout, self.log_path, self.tail, on_line)

    def alive(self) -> bool:
        return self.process.poll() is None


class Federation:
    """The processes of one federated run on this machine."""

    def __init__(self, layout: Layout, silos: list[str], venv: Path, log: Callable[[str], None]):
        self.layout, self.silos, self.venv, self.log = layout, silos, venv, log
        self.id = uuid.uuid4().hex
        self.port = 0
        self.processes: list[Process] = []

    def env(self, threads: int) -> dict[str, str]:
        import legalbuild

        root = str(Path(legalbuild.__file__).resolve().parents[1])
        path = f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))
        }
        return {
            **env, "PATH": path, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1",
            "FLWR_HOME": str(self.layout.coordinator / "flwr-home"), MARKER: self.id,
            "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
        }  # fmt: skip

    def start(self) -> None:
        """SuperLink, then one SuperNode per silo (ready to take the run)."""
        bin_dir, coordinator = self.venv / "bin", self.layout.coordinator
        coordinator.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--disable-runtime-dependency-installation"]
        link = Process("superlink", argv, self.env(1), coordinator / "superlink.log")
        self.processes.append(link)
        self._wait_listening(link)
        threads = max(1, (os.cpu_count() or 1) // len(self.silos))
        for name in self.silos:
            folder = self.layout.silo(name)
            node_config = f'silo="{name}" spec="{folder / "spec.json"}"'
            argv = [str(bin_dir / "flower-supernode"), "--insecure"]
            argv += ["--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port())]
            argv += ["--node-config", node_config]
            node = Process(f"silo {name}", argv, self.env(threads), folder / "supernode.log")
            (folder / "supernode.pid").write_text(f"{node.process.pid}\n")
            self.processes.append(node)
        self.log(
            f"Flower: SuperLink on 127.0.0.1:{self.port} (--insecure, loopback), "
            f"{len(self.silos)} SuperNodes ({', '.join(self.silos)})"
        )

    def _wait_listening(self, link: Process, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not link.alive():
                raise self.failure(f"the SuperLink exited with {link.process.returncode}", link)
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            time.sleep(0.3)
        raise self.failure(
            f"the SuperLink did not listen on port {self.port} in {seconds:.0f} s", link
        )

    def run(self, spec: Path) -> int:
        """`flwr run` of legalbuild's app against this SuperLink, streamed; its exit code."""
        coordinator = self.layout.coordinator
        home = coordinator / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        app = coordinator / "app"
        app.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(APP_PYPROJECT)
        argv = [str(self.venv / "bin" / "flwr"), "run", str(app), CONNECTION, "--stream"]
        argv += ["--run-config", f'spec="{spec}"']

        def forward(line: str) -> None:
            if LOG_MARK in line:
                self.log(line.split(LOG_MARK, 1)[1])

        runner = Process("flwr run", argv, self.env(1), coordinator / "flwr-run.log", forward)
        self.processes.append(runner)
        code = runner.process.wait()
        runner.pump.join(timeout=10)
        return code

    def signal_group(self, signum: int) -> None:
        for proc in self.processes:
            signal_group(proc.process.pid, signum)

    def stop(self) -> None:
        """Every group, then any process of this federation still alive (by its marker)."""
        for proc in reversed(self.processes):
            if proc.alive():
                stop_group(proc.process, grace_s=10)
        stop_marked(self.id)

    def failure(self, what: str, proc: Process) -> StageFailedError:
        tail = "\n".join(f"    {line}" for line in list(proc.tail)[-12:])
        return StageFailedError(
            f"federated training: {what}. Last lines of its log:\n{tail}",
            hint=f"the whole log is {proc.log_path}",
        )


def marked_pids(federation_id: str) -> list[int]:
    """Processes whose environment carries this federation's marker (/proc on Linux)."""
    needle = f"{MARKER}={federation_id}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if needle in environ.read_bytes().split(b"\0"):
                pid = int(environ.parent.name)
                if pid != os.getpid() and not _zombie(pid):
                    found.append(pid)
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def stop_marked(federation_id: str, grace_s: float = 10) -> list[int]:
    """SIGTERM every marked process, SIGKILL what is left after `grace_s`; the pids found."""
    pids = marked_pids(federation_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := marked_pids(federation_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids
