"""Flower ServerApp of legalbuild's federated training (runs in the Flower venv; see coordinator.py)."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from legalbuild.federated import coordinator

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    coordinator.run(grid, str(context.run_config["spec"]))
