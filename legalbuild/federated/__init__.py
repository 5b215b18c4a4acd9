"""Federated LoRA training on Flower's Deployment Engine ([federated] in a recipe).

The builder (the train stage, in `.venv`) starts a SuperLink, one SuperNode per silo and `flwr run`
from a separate environment (`.venv-flower`: flwr pins a fastapi that vLLM's cannot share) and
reads back the aggregated adapter; the ServerApp (server_app.py, coordinator.py) and the ClientApp
(client_app.py, silo.py) run inside that environment. Rows never leave a silo's folder: only
adapter weights, example counts and validation metrics travel.

- environment.py  where the Flower venv is, its library versions (for the train key)
- layout.py       the folders of one federated run (coordinator's, each silo's) and their specs
- deploy.py       SuperLink + SuperNodes + `flwr run` as process groups, stopped as a whole
- run.py          the train stage's federated path: specs, initial adapter, federation, outputs
- coordinator.py  the ServerApp's rounds: Flower strategy, checkpoints, failure policy, final adapter
- silo.py         inside a silo: curate + normalize its data, train local steps, validation loss
- combine.py      LoRA aggregation arithmetic: weighted mean, exact rank-concatenated combination
"""
