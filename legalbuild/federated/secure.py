"""Secure aggregation (runs in the Flower venv): Flower's SecAgg+ protocol carries a round, so the
coordinator learns the weighted mean of the silos' adapters and never one silo's adapter.

Server side, `aggregate` runs Flower's `SecAggPlusWorkflow` for one round: setup (public keys),
share keys (each silo's secrets split among the others), collect masked vectors (each silo trains,
then sends its adapter x its example count, quantized and masked), unmask (the masks cancel in the
sum). The workflow drives the legacy strategy interface; `_OneRound` is that interface for one
round: it hands out the fit instructions and keeps what the workflow unmasked, the example-weighted
mean (FedAvg's, and FedProx's: its proximal term lives in the silos' loss).

Silo side, Flower's `secaggplus_mod` wraps the train handler (client_app.py); the handler reads the
legacy fit instructions (`fit_ins`) and answers a legacy fit result (`fit_res`), whose plain arrays
the mod replaces by the masked vector before anything leaves the silo.

Adapter values are clipped to +-clipping_range and quantized to 2**22 levels (Flower's default), so
the mean is exact to silos x 2 x clipping_range / 2**22 per value, not to the last float bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow

FIT_INS = "fitins.parameters"  # the array record of a legacy fit instruction (SecAgg+ stage 2)
NAMES = "adapter-names"  # the adapter's tensor names, in the order of the legacy parameter list
LEVELS = 2**22  # quantization levels per value (Flower's default); the modulus is 2**32


class _Silo(ClientProxy):
    """A node as the legacy strategy interface names it; the workflow reads only node_id."""

    def __init__(self, node_id: int):
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


class _OneRound:
    """The legacy strategy the workflow drives, for one round."""

    def __init__(self, nodes: list[int], config: dict[str, Any]):
        self.nodes, self.config = nodes, config
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.mean: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
        return [(_Silo(n), FitIns(parameters, dict(self.config))) for n in self.nodes]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
        # every result carries the unmasked aggregate: the example-weighted mean of the silos'
        self.results = results
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
            return results[0][1].parameters, {}
        return None, {}


class _Counting:
    """The Grid, counting the bytes of what it carries (arrays, and the protocol's byte strings)."""

    def __init__(self, grid: Any):
        self.grid, self.sent, self.received, self.arrays_received = grid, 0, 0, 0

    def send_and_receive(self, messages: Any, timeout: float | None = None) -> list:
        messages = list(messages)
        self.sent += sum(payload_bytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in (r for r in replies if not r.has_error()):
            self.received += payload_bytes(reply.content)
            self.arrays_received += array_bytes(reply.content)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


def array_bytes(content: RecordDict) -> int:
    """Bytes of the arrays a message carries (the weights; what a plain round sends each way)."""
    return sum(len(a.data) for rec in content.array_records.values() for a in rec.values())


def payload_bytes(content: RecordDict) -> int:
    total = array_bytes(content)
    for record in content.config_records.values():
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                total += len(item) if isinstance(item, bytes) else 0
    return total


def aggregate(grid: Any, spec: dict[str, Any], rnd: int, arrays: dict[str, np.ndarray],
              config: dict[str, Any], nodes: list[int], max_weight: float) -> tuple:  # fmt: skip
    """One round under SecAgg+: (mean adapter or None when the protocol halted, {silo: metrics},
    bytes: sent, received, and received as plain arrays (none: the mod clears them))."""
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    secure, names = spec["secure_aggregation"], sorted(arrays)
    strategy = _OneRound(nodes, {**config, NAMES: "\n".join(names)})
    context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=strategy,  # type: ignore[arg-type]
                            client_manager=SimpleClientManager())  # fmt: skip
    parameters = ndarrays_to_parameters([np.ascontiguousarray(arrays[k]) for k in names])
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: rnd}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        parameters, True
    )
    counting = _Counting(grid)
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,  # every silo holds a share of every other's secrets
        reconstruction_threshold=float(secure["reconstruction_threshold"]),
        max_weight=max_weight,  # the total example count: every weight ratio is <= 1
        clipping_range=float(secure["clipping_range"]),
        quantization_range=LEVELS,
        timeout=spec["round_timeout_s"],
    )
    workflow(counting, context)
    silos = {str(res.metrics["silo"]): {k: v for k, v in res.metrics.items() if k != "silo"}
             for _, res in strategy.results}  # fmt: skip
    mean = None  # Flower dequantizes to float64: back to the adapter's own dtype
    if strategy.mean is not None:
        mean = {k: v.astype(arrays[k].dtype) for k, v in zip(names, strategy.mean, strict=True)}
    traffic = {"sent": counting.sent, "received": counting.received,
               "arrays_received": counting.arrays_received}  # fmt: skip
    return mean, silos, traffic


# ------------------------------------------------------------------------------ silo side
def is_fit_ins(content: RecordDict) -> bool:
    return FIT_INS in content.array_records


def fit_ins(content: RecordDict) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The global adapter and the round's config from a legacy fit instruction."""
    ins = compat.recorddict_to_fitins(content, keep_input=True)
    config = dict(ins.config)
    names = str(config.pop(NAMES)).split("\n")
    return dict(zip(names, parameters_to_ndarrays(ins.parameters), strict=True)), config


def fit_res(arrays: dict[str, np.ndarray], metrics: dict[str, Any], silo: str) -> RecordDict:
    """The silo's legacy fit result: secaggplus_mod masks its arrays before the reply leaves."""
    names = sorted(arrays)
    res = FitRes(Status(Code.OK, "trained"), ndarrays_to_parameters([arrays[k] for k in names]),
                 int(metrics["num-examples"]), {**metrics, "silo": silo})  # fmt: skip
    return compat.fitres_to_recorddict(res, keep_input=True)
