"""`[serve]` tensor/pipeline/data parallel sizes: passed to vLLM, checked against the devices
this host has before anything starts."""

from __future__ import annotations

import os

import pytest

from legalbuild.errors import ServeError
from legalbuild.recipe import ServeSection
from legalbuild.serve.preflight import check_parallel_sizes
from legalbuild.serve.server import server_command


def test_sizes_reach_vllms_command(tmp_path):
    settings = ServeSection(tensor_parallel_size=2, pipeline_parallel_size=2, data_parallel_size=2)
    argv = server_command(tmp_path, settings, "m", "127.0.0.1", 8123, "gpu", 1024)
    for flag in ("--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size"):
        assert argv[argv.index(flag) + 1] == "2"


def test_sizes_are_checked_against_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    check_parallel_sizes(ServeSection(tensor_parallel_size=2, data_parallel_size=2), "gpu")
    with pytest.raises(ServeError, match=r"= 8 devices, and this host has 4 visible GPU") as err:
        check_parallel_sizes(ServeSection(tensor_parallel_size=4, pipeline_parallel_size=2), "gpu")
    assert "--nnodes" in str(err.value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ServeError, match="0 visible GPU"):
        check_parallel_sizes(ServeSection(tensor_parallel_size=2), "gpu")
    check_parallel_sizes(ServeSection(), "gpu")  # one device: nothing to check
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    two_nodes = ["--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1"]
    check_parallel_sizes(
        ServeSection(tensor_parallel_size=8, pipeline_parallel_size=2, extra_args=two_nodes), "gpu"
    )
    with pytest.raises(ServeError, match="= 16 devices"):
        check_parallel_sizes(ServeSection(tensor_parallel_size=8, pipeline_parallel_size=2), "gpu")
    cores = os.cpu_count() or 1
    with pytest.raises(ServeError, match=f"this host has {cores}"):
        check_parallel_sizes(ServeSection(data_parallel_size=cores + 1), "cpu")


@pytest.mark.parametrize(
    "flag", ["--pipeline-parallel-size=2", "-pp", "-dp", "--data_parallel_size"]
)
def test_the_flags_are_managed_not_extra_args(flag):
    with pytest.raises(ValueError, match="parallel_size"):
        ServeSection(extra_args=[flag, "2"])
