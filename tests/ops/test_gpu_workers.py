"""A GPU per worker with existing engines: Dask workers pinned one per GPU, Prefect process workers
pinned with ``ieiw worker --gpu N``, the ``gpu`` limit counting the pool's GPUs, and each model loaded
once per worker on that worker's device.

No GPU is needed: pinning is the environment a worker process gets (``CUDA_VISIBLE_DEVICES``), which
these tests read from inside the worker processes; on CPU every spelling of a worker's device is
``cpu``, and the cache must hold one copy of a model there, whatever spelling or batch size asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpu_worker_probe import load_inpainter_and_report
from phrasecut_fixture import write_phrasecut
from tiny_lama import save_tiny_lama

from ieiw.flows.config import RunnerConfig
from ieiw.flows.deploy import (
    GPU_POOL_VARIABLE,
    ensure_work_pool,
    gpu_limit,
    gpu_pool,
    pool_slots,
    register_gpu_worker,
    set_gpu_pool_size,
    unregister_gpu_worker,
    worker_environment,
)
from ieiw.flows.runners import gpu_cluster, make_task_runner, worker_gpus
from ieiw.flows.stage_flow import run_stage_flow
from ieiw.pipelines.removal import RemovalConfig, RemovalStage
from ieiw.storage.runner import forget_models, loaded_models, worker_model
from ieiw.storage.stage import ModelSpec, model_key

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lama_path(tmp_path_factory):
    return save_tiny_lama(str(tmp_path_factory.mktemp("lama") / "big-lama.pt"))


def test_the_dask_runner_pins_a_worker_process_to_each_gpu():
    runner = make_task_runner(RunnerConfig(task_runner="dask", gpus=[0, "1"]))
    assert runner.cluster_class == "ieiw.flows.runners.gpu_cluster"
    assert runner.cluster_kwargs == {"gpus": ["0", "1"], "threads_per_worker": 1}
    # without GPUs here, "auto" means none: a plain local cluster of max_workers processes
    assert worker_gpus(RunnerConfig(task_runner="dask")) == []
    plain = make_task_runner(RunnerConfig(task_runner="dask", max_workers=3))
    assert plain.cluster_class is None and plain.cluster_kwargs["n_workers"] == 3
    assert worker_gpus(RunnerConfig(task_runner="dask", gpus="none")) == []


def test_each_dask_gpu_worker_sees_its_gpu_and_holds_one_copy_of_a_model(lama_path):
    from distributed import Client

    with gpu_cluster(["0", "1"]) as cluster, Client(cluster) as client:
        states = client.run(load_inpainter_and_report, lama_path)
        resources = {w["id"]: w["resources"] for w in client.scheduler_info()["workers"].values()}
    assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in states.values()) == ["0", "1"]
    assert sorted(resources) == ["gpu-0", "gpu-1"] and all(r == {"GPU": 1} for r in resources.values())
    assert len({s["pid"] for s in states.values()}) == 2  # two processes
    for state in states.values():
        assert state["pinned"] == state["CUDA_VISIBLE_DEVICES"]
        # three device spellings and three batch sizes asked: one copy, loaded once, on this device
        assert len(state["entries"]) == 1 and state["loads"] == 1
        assert state["entries"][0][1] == "cpu"


def test_the_model_cache_never_holds_two_copies_on_one_device(lama_path):
    forget_models()
    here = load_inpainter_and_report(lama_path)
    assert here["loads"] == 1 and [device for _, device in here["entries"]] == ["cpu"]
    from functools import partial

    from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter

    small, large = (InpaintConfig(backend="lama", model=lama_path, batch_size=n) for n in (2, 16))
    first = worker_model(ModelSpec(model_key("inpainter", small), partial(build_inpainter, small), None, 2))
    second = worker_model(
        ModelSpec(model_key("inpainter", large), partial(build_inpainter, large), "cpu", 16)
    )
    assert (first.batch_size, second.batch_size) == (2, 16) and first.module is second.module
    # what the model is does make another entry: a crop strategy is another inpainter
    crop = InpaintConfig(backend="lama", model=lama_path, strategy="crop")
    worker_model(ModelSpec(model_key("inpainter", crop), partial(build_inpainter, crop), "cpu"))
    assert len(loaded_models("inpainter")) == 2
    forget_models()


def test_a_removal_build_runs_on_gpu_pinned_dask_workers(prefect_api, tmp_path, lama_path):
    annotations, images = write_phrasecut(str(tmp_path / "phrasecut"), n_images=4, size=96)
    config = RemovalConfig.model_validate(
        {
            "source": {"annotations": [annotations], "images": images},
            "inpaint": {"backend": "lama", "model": lama_path, "strategy": "crop", "window": 64},
            "batch_size": 2,
        }
    )
    runner = RunnerConfig(task_runner="dask", gpus=["0", "1"], retries=0)
    stage = RemovalStage(config, str(tmp_path / "out" / "removal"))
    summary = run_stage_flow(stage, runner, task_runner=make_task_runner(runner))
    assert summary.by_task == {"add": 8, "remove": 8} and summary.batches == 4


def test_the_gpu_limit_counts_the_gpus_of_the_pool(prefect_api):
    from prefect.variables import Variable

    Variable.unset(GPU_POOL_VARIABLE)
    assert pool_slots(gpu_pool()) == 1  # nothing registered: one slot, whatever this machine has
    assert register_gpu_worker("node-a/gpu0") == 1 and gpu_limit() == 1
    assert register_gpu_worker("node-a/gpu1") == 2 and register_gpu_worker("node-b/gpu0") == 3
    assert register_gpu_worker("node-a/gpu1") == 3  # a restarted worker is not counted twice
    assert gpu_limit() == 3 and gpu_pool()["workers"] == ["node-a/gpu0", "node-a/gpu1", "node-b/gpu0"]
    assert unregister_gpu_worker("node-b/gpu0") == 2 and gpu_limit() == 2
    assert set_gpu_pool_size(8) == 8 and register_gpu_worker("node-c/gpu0") == 8 and gpu_limit() == 8
    assert set_gpu_pool_size(0) == 3 and gpu_limit() == 3  # back to counting the workers
    for name in gpu_pool()["workers"]:
        unregister_gpu_worker(name)
    assert gpu_limit() == 1
    assert worker_environment(3, base={"PATH": "/bin"}) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "3"}


PROBE_FLOW = """
import json, os
from prefect import flow


@flow
def probe(out: str):
    with open(out, "w") as handle:
        json.dump({"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}, handle)
"""


def test_ieiw_worker_gpu_pins_the_flow_runs_it_starts(prefect_api, tmp_path):
    from prefect import flow
    from prefect.deployments import run_deployment
    from prefect.variables import Variable

    Variable.unset(GPU_POOL_VARIABLE)
    register_gpu_worker("other-node/gpu0")  # a GPU worker already running elsewhere
    pool = "ieiw-gpu-test"
    ensure_work_pool(pool)
    (tmp_path / "probe_flow.py").write_text(PROBE_FLOW)
    out = tmp_path / "seen.json"
    flow.from_source(source=str(tmp_path), entrypoint="probe_flow.py:probe").deploy(
        name="probe", work_pool_name=pool, parameters={"out": str(out)}, print_next_steps=False
    )
    run = run_deployment("probe/probe", timeout=0)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    worker = subprocess.run(
        [sys.executable, "-m", "ieiw.flows.cli", "worker", "--gpu", "3", "--pool", pool, "--run-once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = worker.stdout + worker.stderr
    assert worker.returncode == 0, log[-3000:]
    assert json.loads(out.read_text()) == {"CUDA_VISIBLE_DEVICES": "3"}, log[-3000:]
    assert "CUDA_VISIBLE_DEVICES=3; the 'gpu' limit is now 2" in log  # counted while it ran ...
    assert gpu_pool()["workers"] == ["other-node/gpu0"] and gpu_limit() == 1  # ... not once it stopped
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.is_completed()
