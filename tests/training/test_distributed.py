"""DDP through the elastic launcher (2 gloo CPU processes): equivalence, crash, Slurm path."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from sv_kedro.training.batches import ShuffledLoaderFactory
from sv_kedro.training.checkpoint import load_checkpoint
from sv_kedro.training.distributed import DistContext, all_gather_variable, pick_device
from sv_kedro.training.jobs import TrainingJob, launch_training, resolve_callable
from sv_kedro.training.launcher import DistributedConfig, TrainingFailed, launch
from sv_kedro.training.task import ClassificationTask, GatheredLosses, TrainState

N_ITEMS, DIM, CLASSES = 40, 5, 3


# Builders: module-level so that spawned workers can import them from this test module.
def build_model(config: dict) -> nn.Module:
    torch.manual_seed(config["seed"])
    return nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, CLASSES))


def build_loader(config: dict) -> ShuffledLoaderFactory:
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(N_ITEMS, DIM, generator=generator)
    labels = torch.randint(0, CLASSES, (N_ITEMS,), generator=generator)
    dataset = TensorDataset(features, labels, torch.arange(N_ITEMS))
    return ShuffledLoaderFactory(dataset, batch_size=config["batch_size"])


class RecordingTask(ClassificationTask):
    """CE that can fail on one rank, and reports the gathered per-sample losses."""

    def __init__(self, fail_rank: int | None, fail_step: int | None):
        super().__init__()
        self.fail_rank, self.fail_step = fail_rank, fail_step

    def compute_loss(self, model, batch, state: TrainState):
        if state.rank == self.fail_rank and state.step == self.fail_step:
            raise ValueError(f"deliberate failure in rank {state.rank} at step {state.step}")
        return super().compute_loss(model, batch, state)

    def on_epoch_end(self, state: TrainState, gathered: GatheredLosses) -> dict[str, float]:
        return {
            "gathered": len(gathered),
            "unique_indices": len(set(gathered.indices.tolist())),
            "loss_sum": float(gathered.losses.double().sum()),
        }


def build_task(config: dict) -> RecordingTask:
    return RecordingTask(config.get("fail_rank"), config.get("fail_step"))


def make_job(tmp_path, name: str, batch_size: int, **task_config) -> TrainingJob:
    return TrainingJob(
        model_builder=build_model,
        task_builder=build_task,
        loader_builder=build_loader,
        checkpoint_dir=str(tmp_path / name),
        model_config={"seed": 11},
        task_config=task_config,
        loader_config={"batch_size": batch_size},
        train_config={
            "epochs": 1,
            "max_steps": 5,
            "optimizer": "adam",
            "lr": 0.05,
            "log_every": 1,
            "progress_bar": False,
        },
        architecture="tiny_mlp",
    )


def cpu(nproc: int) -> DistributedConfig:
    return DistributedConfig(nproc_per_node=nproc, device="cpu", timeout_s=30)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_double_batch(tmp_path):
    started = time.perf_counter()
    single = launch_training(make_job(tmp_path, "single", 8), cpu(1))
    in_process_s = time.perf_counter() - started
    started = time.perf_counter()
    ddp = launch_training(make_job(tmp_path, "ddp", 4), cpu(2))
    ddp_s = time.perf_counter() - started
    print(f"\n1 process (in-process): {in_process_s:.1f}s, 2 gloo processes: {ddp_s:.1f}s")

    one = load_checkpoint(single.last_checkpoint_path)
    two = load_checkpoint(ddp.last_checkpoint_path)
    assert one["training_state"]["step"] == two["training_state"]["step"] == 5
    for name, weight in one["model_state"].items():
        torch.testing.assert_close(two["model_state"][name], weight, rtol=0, atol=1e-5)
    assert not torch.equal(one["model_state"]["0.weight"], build_model({"seed": 11})[0].weight)
    # Per-sample losses of both ranks were gathered (all_gather of variable-length tensors).
    rows = {
        name: r.metrics[r.metrics["kind"] == "epoch"].iloc[0]
        for name, r in (("single", single), ("ddp", ddp))
    }
    assert rows["ddp"]["gathered"] == rows["ddp"]["unique_indices"] == N_ITEMS
    assert rows["ddp"]["loss_sum"] == pytest.approx(rows["single"]["loss_sum"], rel=1e-5)
    # Logged losses are averaged over both ranks.
    train_one = single.metrics[single.metrics["kind"] == "train"]["loss"].to_numpy()
    train_two = ddp.metrics[ddp.metrics["kind"] == "train"]["loss"].to_numpy()
    assert train_two == pytest.approx(train_one, rel=1e-5)


@pytest.mark.slow
def test_failing_rank_ends_the_launch_with_its_error(tmp_path):
    job = make_job(tmp_path, "crash", 4, fail_rank=1, fail_step=2)
    started = time.perf_counter()
    with pytest.raises(TrainingFailed) as caught:
        launch_training(job, cpu(2))
    elapsed = time.perf_counter() - started
    print(f"\ncrash surfaced after {elapsed:.1f}s")
    assert elapsed < 60
    message = str(caught.value)
    assert "training worker rank 1" in message
    assert "ValueError: deliberate failure in rank 1 at step 2" in message
    assert "compute_loss" in message  # the worker's traceback is included
    assert caught.value.rank == 1


def double(value: int) -> int:
    return 2 * value


def test_single_process_runs_in_process_and_slurm_path_runs_via_submitit(tmp_path):
    assert launch(double, (21,), cpu(1)) == 42
    slurm = DistributedConfig.from_dict(
        {
            "launcher": "slurm",
            "nproc_per_node": 1,
            "device": "cpu",
            "slurm": {"cluster": "debug", "folder": str(tmp_path / "slurm")},
        }
    )
    assert launch(double, (5,), slurm) == 10


def test_distributed_config_errors_and_defaults():
    assert DistributedConfig(device="cpu").resolved_nproc() == 1
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nprocs'\]"):
        DistributedConfig.from_dict({"nprocs": 2})
    with pytest.raises(ValueError, match=r"distributed\.nproc_per_node must be an integer"):
        DistributedConfig.from_dict({"nproc_per_node": "abc"})
    assert DistributedConfig.from_dict({"nproc_per_node": "2"}).nproc_per_node == 2
    with pytest.raises(ValueError, match="node_rank=2"):
        DistributedConfig(nnodes=2, node_rank=2)
    with pytest.raises(ValueError, match="needs rdzv_endpoint"):
        launch(double, (1,), DistributedConfig(nproc_per_node=1, nnodes=2, device="cpu"))
    with pytest.raises(ValueError, match=r"expected 'package\.module:function'"):
        resolve_callable("no_colon", "model_builder")
    with pytest.raises(AttributeError, match="has no 'missing'"):
        resolve_callable("sv_kedro.training.loop:missing", "task_builder")


def test_gather_helpers_work_in_a_single_process():
    ctx = DistContext()
    values = torch.arange(3.0)
    assert torch.equal(all_gather_variable(values, ctx), values)


def test_pick_device_names_the_key_and_refuses_one_gpu_for_every_worker():
    assert pick_device("cpu", local_rank=3) == torch.device("cpu")
    with pytest.raises(
        ValueError, match=r"distributed.device must be auto, cpu or cuda, got 'cuda:1'"
    ):
        pick_device("cuda:1")
    with pytest.raises(ValueError, match=r"got 'gpu'"):
        pick_device("gpu")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        assert pick_device("cuda", local_rank=count + 1) == torch.device("cuda", 1 % count)
    else:
        assert pick_device("auto", local_rank=1) == torch.device("cpu")
        with pytest.raises(
            ValueError, match=r"distributed.device 'cuda' but CUDA is not available"
        ):
            pick_device("cuda")
