"""The ServerApp's work (inside the Flower venv): the rounds of one federated run.

- Resume: the global adapter after every completed round is in rounds/round-N.safetensors
  (FedAdam's moments beside it); a new run starts after the last complete one.
- Round 0 asks every silo to prepare its data (curate + normalize inside the silo) and to say
  how many rows it trains on; then each round: Flower's strategy (FedAvg, FedProx, FedAdam, with
  Flower's DP clipping wrapper when asked) configures the messages, the Grid carries them, the
  strategy aggregates the replies. A silo that errs or dies (the SuperLink answers for a node that
  stops its heartbeat) fails the run or is left out, per `on_silo_failure`.
- After the last round the final adapter is formed (combine.py) and the silos report its
  validation loss (and that of the alternative when `final_adapter = "best"`).

Lines meant for the build's log are printed with deploy.LOG_MARK; failure.json or result.json
tells the builder how it ended. Only weights, counts and metrics are written here, never rows.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from legalbuild.federated import combine, secure
from legalbuild.federated.deploy import LOG_MARK
from legalbuild.federated.layout import read_json, write_json

CONNECT_TIMEOUT_S = 600


def say(message: str) -> None:
    print(f"{LOG_MARK}{message}", flush=True)


class RunFailed(Exception):
    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


def to_record(arrays: combine.Arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(arrays[k])) for k in sorted(arrays)})


def from_record(record: ArrayRecord) -> combine.Arrays:
    return {k: v.numpy() for k, v in record.items()}


def save_arrays(path: Path, arrays: combine.Arrays) -> None:
    from safetensors.numpy import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)


def load_arrays(path: Path) -> combine.Arrays:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def round_lr(spec: dict[str, Any], rnd: int) -> float:
    """The silos' learning rate in round `rnd` (constant within a round): [train] learning_rate
    on the recipe's schedule over the rounds (cosine, linear, or constant)."""
    lr, progress = spec["learning_rate"], (rnd - 1) / spec["rounds"]
    if spec["lr_scheduler"] == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * progress))
    if spec["lr_scheduler"] == "linear":
        return lr * (1 - progress)
    return lr


def make_strategy(spec: dict[str, Any], silos: int) -> Any:
    from flwr.serverapp import strategy as flower

    need = silos if spec["on_silo_failure"] == "fail" else spec["min_silos"]
    common = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": need,
              "min_available_nodes": need, "min_evaluate_nodes": need}  # fmt: skip
    name = spec["strategy"]
    if name == "fedprox":
        strategy = flower.FedProx(**common, proximal_mu=spec["proximal_mu"])
    elif name == "fedadam":
        strategy = flower.FedAdam(
            **common, eta=spec["server_learning_rate"], eta_l=spec["learning_rate"]
        )
    else:
        strategy = flower.FedAvg(**common)
    dp = spec["dp"]
    if dp["mode"] == "server-fixed":
        wrapper = flower.DifferentialPrivacyServerSideFixedClipping
    elif dp["mode"] == "client-fixed":
        wrapper = flower.DifferentialPrivacyClientSideFixedClipping
    else:
        return strategy
    return wrapper(strategy, dp["noise_multiplier"], dp["clipping_norm"], silos)


class Coordinator:
    def __init__(self, spec: dict[str, Any], grid: Any):
        self.spec, self.grid = spec, grid
        self.dir = Path(spec["coordinator_dir"])
        self.rounds_dir = self.dir / "rounds"
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        self.names: dict[int, str] = {}  # node id -> silo name
        self.counts: dict[str, dict[str, int]] = {}
        self.strategy = make_strategy(spec, len(spec["silos"]))

    # ------------------------------------------------------------------ resume and round 0
    def resume(self) -> tuple[int, combine.Arrays]:
        done = 0
        for path in self.rounds_dir.glob("round-*.json"):
            n = int(path.stem.split("-")[1])
            if (self.rounds_dir / f"round-{n}.safetensors").is_file() and n <= self.spec["rounds"]:
                done = max(done, n)
        if done == 0:
            return 0, load_arrays(self.dir / "initial" / "adapter_model.safetensors")
        moments = self.rounds_dir / f"strategy-{done}.safetensors"
        inner = getattr(self.strategy, "strategy", self.strategy)
        if moments.is_file():
            state = load_arrays(moments)
            inner.m_t = {k[2:]: v for k, v in state.items() if k.startswith("m.")}
            inner.v_t = {k[2:]: v for k, v in state.items() if k.startswith("v.")}
        say(f"resuming after round {done} of {self.spec['rounds']} (its global adapter is on disk)")
        return done, load_arrays(self.rounds_dir / f"round-{done}.safetensors")

    def connect(self) -> list[int]:
        want, deadline = len(self.spec["silos"]), time.monotonic() + CONNECT_TIMEOUT_S
        while len(nodes := list(self.grid.get_node_ids())) < want:
            if time.monotonic() > deadline:
                raise RunFailed(f"{len(nodes)} of {want} silos connected in {CONNECT_TIMEOUT_S} s",
                                "read the silos' supernode.log")  # fmt: skip
            time.sleep(0.5)
        return nodes

    def prepare(self, nodes: list[int]) -> None:
        """Every silo curates and normalizes its own rows; only their counts come back."""
        messages = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n,
                            message_type=f"{MessageType.QUERY}.prepare") for n in nodes]  # fmt: skip
        for reply in self.grid.send_and_receive(messages, timeout=self.spec["round_timeout_s"]):
            if reply.has_error():
                raise RunFailed(f"a silo could not prepare its data: {reply.error.reason}",
                                "read that silo's supernode.log")  # fmt: skip
            name = str(reply.content["silo"]["name"])
            self.names[reply.metadata.src_node_id] = name
            self.counts[name] = {k: int(v) for k, v in reply.content["metrics"].items()}
        unknown = sorted(set(self.counts) - set(self.spec["silos"]))
        missing = sorted(set(self.spec["silos"]) - set(self.counts))
        if unknown or missing or len(self.names) != len(self.spec["silos"]):
            raise RunFailed(f"silos expected {self.spec['silos']}, answered {sorted(self.names.values())}",
                            "each SuperNode's node-config names one silo of the recipe")  # fmt: skip
        summary = ", ".join(
            f"{n}: {c['num-examples']} train / {c['val-rows']} val rows"
            for n, c in sorted(self.counts.items())
        )
        say(f"silos prepared their data inside the silo ({summary})")  # fmt: skip

    # ------------------------------------------------------------------------------ rounds
    def round(self, rnd: int, arrays: combine.Arrays) -> combine.Arrays:
        spec, started = self.spec, time.perf_counter()
        config = {"lr": round_lr(spec, rnd), "local-steps": spec["local_steps"],
                  "seed": spec["seed"] + rnd, "server-round": rnd}  # fmt: skip
        if spec["secure_aggregation"]["enabled"]:
            new, silos, traffic = self.secure_round(rnd, arrays, config)
        else:
            new, silos, traffic = self.plain_round(rnd, arrays, config)
        record = self.round_record(rnd, silos, traffic, time.perf_counter() - started)
        self.checkpoint(rnd, new, record)
        return new

    def plain_round(self, rnd: int, arrays: combine.Arrays, config: dict[str, Any]) -> tuple:
        """The strategy's messages and aggregation: (new adapter, {silo: metrics}, bytes)."""
        spec = self.spec
        messages = list(self.strategy.configure_train(rnd, to_record(arrays), ConfigRecord(config), self.grid))  # fmt: skip
        sent = sum(secure.array_bytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=spec["round_timeout_s"]))
        ok = [r for r in replies if not r.has_error()]
        node_of = {
            m.metadata.message_id: m.metadata.dst_node_id for m in messages
        }  # set by the push
        failed = {}
        for reply in (r for r in replies if r.has_error()):  # the SuperLink answers for a dead node
            node = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            failed[self.names.get(node, f"node {node}")] = reply.error.reason
        self.left_out(rnd, {str(r.content["silo"]["name"]) for r in ok}, failed)
        new, _ = self.strategy.aggregate_train(rnd, ok)
        if new is None:
            raise RunFailed(f"round {rnd}: the strategy aggregated nothing", "read flwr-run.log")
        if rnd == spec["rounds"]:
            self.keep_last(ok)
        silos = {str(r.content["silo"]["name"]): dict(r.content["metrics"]) for r in ok}
        received = sum(secure.array_bytes(r.content) for r in ok)
        return (
            from_record(new),
            silos,
            {"sent": sent, "received": received, "arrays_received": received},
        )

    def secure_round(self, rnd: int, arrays: combine.Arrays, config: dict[str, Any]) -> tuple:
        """Flower's SecAgg+ workflow: only the weighted mean is ever unmasked here."""
        if self.spec["strategy"] == "fedprox":
            config["proximal-mu"] = self.spec["proximal_mu"]  # what FedProx's configure_train sends
        total = sum(c["num-examples"] for c in self.counts.values())
        mean, silos, traffic = secure.aggregate(
            self.grid, self.spec, rnd, arrays, config, list(self.names), float(total)
        )
        dropped = {n: "dropped out of the SecAgg+ round" for n in set(self.counts) - set(silos)}
        self.left_out(rnd, set(silos), dropped)
        if mean is None:
            raise RunFailed(
                f"round {rnd}: secure aggregation halted (fewer silos answered than its "
                "reconstruction threshold needs)",
                f"the next build resumes after round {rnd - 1}; read flwr-run.log",
            )
        return mean, silos, traffic

    def left_out(self, rnd: int, answered: set[str], failed: dict[str, str]) -> None:
        """The silos missing from a round: fail the run, or go on without them (the recipe's policy)."""
        spec = self.spec
        for name in set(self.counts) - answered - set(failed):
            failed[name] = "no reply before the round's timeout"
        if not failed:
            return
        what = "; ".join(f"silo {n}: {why}" for n, why in sorted(failed.items()))
        if spec["on_silo_failure"] == "fail" or len(answered) < spec["min_silos"]:
            raise RunFailed(
                f"round {rnd} of {spec['rounds']} failed ({what})",
                f"the next build resumes after round {rnd - 1}; "
                'on_silo_failure = "continue" aggregates the silos that answer',
            )
        say(f"round {rnd}: left out {what}; aggregating {len(answered)} silos")

    def round_record(self, rnd: int, silos: dict[str, dict[str, Any]], traffic: dict[str, int], seconds: float) -> dict[str, Any]:  # fmt: skip
        weights = {n: m["num-examples"] for n, m in silos.items()}
        total = sum(weights.values())

        def mean(key: str) -> float | None:
            values = [(m[key], weights[n]) for n, m in silos.items() if key in m]
            return sum(v * w for v, w in values) / total if values and total else None

        record = {"round": rnd, "silos": silos, "left_out": sorted(set(self.counts) - set(silos)),
                  "seconds": round(seconds, 2), "secure": self.spec["secure_aggregation"]["enabled"],
                  "train_loss": mean("train-loss"), "val_loss_local": mean("val-loss"),
                  "val_loss_global_before": mean("val-loss-before"), "lr": round_lr(self.spec, rnd),
                  "bytes_sent": traffic["sent"], "bytes_received": traffic["received"],
                  "array_bytes_received": traffic["arrays_received"]}  # fmt: skip
        sent, received = traffic["sent"], traffic["received"]
        say(
            f"round {rnd}/{self.spec['rounds']}: {len(silos)} silos, train loss {_fmt(record['train_loss'])}, "
            f"silo val loss {_fmt(record['val_loss_local'])} (global model before the round "
            f"{_fmt(record['val_loss_global_before'])}), {sent / 1e6:.2f} MB sent, "
            f"{received / 1e6:.2f} MB received, {seconds:.1f} s"
            + (" (SecAgg+)" if record["secure"] else "")
        )
        return record

    def keep_last(self, ok: list[Message]) -> None:
        """The last round's silo adapters, for the exact combination (never with DP: the server
        only sees clipped, noised aggregates there)."""
        if self.spec["final_adapter"] == "average":
            return
        last = self.dir / "last"
        last.mkdir(exist_ok=True)
        weights = {}
        for reply in ok:
            name = str(reply.content["silo"]["name"])
            save_arrays(last / f"{name}.safetensors", from_record(reply.content["arrays"]))
            weights[name] = float(reply.content["metrics"]["num-examples"])
        write_json(last / "weights.json", weights)

    def checkpoint(self, rnd: int, arrays: combine.Arrays, record: dict[str, Any]) -> None:
        inner = getattr(self.strategy, "strategy", self.strategy)
        moments = {f"m.{k}": v for k, v in (getattr(inner, "m_t", None) or {}).items()}
        moments |= {f"v.{k}": v for k, v in (getattr(inner, "v_t", None) or {}).items()}
        if moments:
            save_arrays(self.rounds_dir / f"strategy-{rnd}.safetensors", moments)
        save_arrays(self.rounds_dir / f"round-{rnd}.safetensors", arrays)
        write_json(
            self.rounds_dir / f"round-{rnd}.json", record
        )  # written last: the round is complete

    # ------------------------------------------------------------------------ final adapter
    def finish(self, arrays: combine.Arrays) -> None:
        spec = self.spec
        candidates = {"average": (arrays, spec["lora_r"], spec["lora_alpha"])}
        product = None
        if spec["final_adapter"] != "average":
            weights = read_json(self.dir / "last" / "weights.json")
            names = sorted(weights)
            updates = [load_arrays(self.dir / "last" / f"{n}.safetensors") for n in names]
            w = [weights[n] for n in names]
            product = combine.product_error(updates, w)
            candidates["exact"] = (combine.exact_combination(updates, w),
                                   spec["lora_r"] * len(names), spec["lora_alpha"] * len(names))  # fmt: skip
            if spec["final_adapter"] == "exact":
                del candidates["average"]
        losses, sent = self.evaluate(candidates)
        chosen = next(iter(candidates))
        if spec["final_adapter"] == "best" and all(math.isfinite(v) for v in losses.values()):
            chosen = min(losses, key=lambda n: losses[n])
        for name, candidate in candidates.items():
            save_arrays(self.dir / f"final-{name}.safetensors", candidate[0])
        result = {"chosen": chosen, "val_loss": losses,
                  "ranks": {n: {"r": c[1], "alpha": c[2]} for n, c in candidates.items()},
                  "product_error": product, "evaluation_bytes_sent": sent, "silos": self.counts,
                  "rounds": [read_json(p) for p in sorted(self.rounds_dir.glob("round-*.json"), key=_round_no)]}  # fmt: skip
        write_json(self.dir / "result.json", result)
        say(f"final adapter: {chosen} (validation loss over the silos: "
            + ", ".join(f"{n} {_fmt(v)}" for n, v in losses.items()) + ")")  # fmt: skip

    def evaluate(self, candidates: dict[str, tuple[combine.Arrays, int, int]]) -> tuple[dict[str, float], int]:  # fmt: skip
        config = {f"{n}-rank": c[1] for n, c in candidates.items()}
        config |= {f"{n}-alpha": c[2] for n, c in candidates.items()}
        content = {n: to_record(c[0]) for n, c in candidates.items()}
        messages = [Message(RecordDict({**content, "config": ConfigRecord(config)}), dst_node_id=node,
                            message_type=MessageType.EVALUATE) for node in self.names]  # fmt: skip
        sent = sum(secure.array_bytes(m.content) for m in messages)
        replies = [r for r in self.grid.send_and_receive(messages, timeout=self.spec["round_timeout_s"]) if not r.has_error()]  # fmt: skip
        if not replies:
            raise RunFailed("no silo evaluated the final adapter", "read the silos' supernode.log")
        losses = {}
        for name in candidates:  # weighted by validation rows; a silo without a loss is left out
            pairs = [(float(r.content["metrics"][f"val-loss-{name}"]), float(r.content["metrics"]["val-rows"])) for r in replies]  # fmt: skip
            pairs = [(v, n) for v, n in pairs if math.isfinite(v) and n > 0]
            total = sum(n for _, n in pairs)
            losses[name] = sum(v * n for v, n in pairs) / total if total else float("nan")
        return losses, sent


def _round_no(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run(grid: Any, spec_path: str) -> None:
    """The ServerApp's main: resume, prepare, the remaining rounds, the final adapter."""
    spec = read_json(spec_path)
    coordinator_dir = Path(spec["coordinator_dir"])
    (coordinator_dir / "failure.json").unlink(missing_ok=True)
    try:
        coordinator = Coordinator(spec, grid)
        done, arrays = coordinator.resume()
        coordinator.prepare(coordinator.connect())
        for rnd in range(done + 1, spec["rounds"] + 1):
            arrays = coordinator.round(rnd, arrays)
        coordinator.finish(arrays)
    except RunFailed as exc:
        write_json(coordinator_dir / "failure.json", {"message": exc.message, "hint": exc.hint})
        say(f"FAILED: {exc.message}")
    except (
        Exception
    ) as exc:  # anything else: the builder names it, the traceback is in flwr-run.log
        write_json(coordinator_dir / "failure.json", {"message": f"the ServerApp failed: {exc!r}",
                                                      "hint": f"read {coordinator_dir / 'flwr-run.log'}"})  # fmt: skip
        raise
