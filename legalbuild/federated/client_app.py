"""Flower ClientApp of legalbuild's federated training: one per silo (runs in the Flower venv;
the work is silo.py). Its node config names the silo and its spec file."""

import uuid

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from legalbuild.federated import secure, silo
from legalbuild.federated.coordinator import from_record, to_record

app = ClientApp()


def client_mods(msg: Message, context: Context, call_next):  # noqa: ANN001
    """Flower's SecAgg+ mod on the stages of a secure round; Flower's client-side clipping when
    the server's DP wrapper asks for it (client-fixed)."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    config = next(iter(msg.content.config_records.values()), {})
    if KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def _reply(msg: Message, spec: dict, metrics: dict, **arrays) -> Message:
    """The reply: arrays, metrics, the silo's name. The nonce keeps every reply's records unique:
    Flower stores objects by content digest, and a record repeated from an earlier round (the
    same name) could not be pushed when the SuperLink dropped a dead silo's objects meanwhile."""
    content = RecordDict({**{k: to_record(v) for k, v in arrays.items()},
                          "metrics": MetricRecord(metrics), "silo": ConfigRecord({"name": spec["name"], "nonce": uuid.uuid4().hex})})  # fmt: skip
    return Message(content, reply_to=msg)


@app.query("prepare")
def prepare(msg: Message, context: Context) -> Message:
    spec = silo.spec_of(str(context.node_config["spec"]))
    return _reply(msg, spec, silo.row_counts(spec))


@app.train(mods=[client_mods])
def train(msg: Message, context: Context) -> Message:
    spec = silo.spec_of(str(context.node_config["spec"]))
    if secure.is_fit_ins(msg.content):  # a SecAgg+ round: its mod masks what this returns
        arrays, config = secure.fit_ins(msg.content)
        new, metrics = silo.train_round(spec, arrays, config)
        return Message(secure.fit_res(new, metrics, spec["name"]), reply_to=msg)
    config = dict(msg.content["config"])
    new, metrics = silo.train_round(spec, from_record(msg.content["arrays"]), config)
    return _reply(msg, spec, metrics, arrays=new)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    spec = silo.spec_of(str(context.node_config["spec"]))
    candidates = {name: from_record(record) for name, record in msg.content.array_records.items()}
    metrics = silo.evaluate(spec, candidates, dict(msg.content["config"]))
    return _reply(msg, spec, metrics)
