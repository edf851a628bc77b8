"""Start training workers from a Kedro node: in-process, torch elastic (local or multi-node) or
Slurm (through ``submitit``).

The node calls ``launch(entrypoint, args, DistributedConfig)`` (or ``launch_training`` for the
training loop). ``entrypoint`` is a module-level function and ``args`` plain data, so spawned
workers rebuild everything themselves and never touch the Kedro catalog. What rank 0 returns
comes back to the node.

- ``nproc_per_node == 1`` and ``nnodes == 1``: the entrypoint runs in this process.
- Otherwise torch's elastic agent (the API behind ``torchrun``) starts ``nproc_per_node``
  workers here; with ``nnodes > 1`` every host runs the same ``kedro run --nodes ...`` with
  its own ``node_rank`` and the shared ``rdzv_endpoint`` (``host:port`` of node 0).
- ``launcher: slurm`` submits one task per node with ``submitit``; each task runs the
  elastic launch above with the node list Slurm gives it.

A failing worker makes the agent stop the others; the first failure's message and
traceback come back in ``TrainingFailed``. Collectives time out after ``timeout_s``, so
workers on other hosts whose peer died fail instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from sv_kedro.utils.params import coerce_scalars

logger = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")


class TrainingFailed(RuntimeError):
    """A training worker failed; the message holds its error and traceback."""

    def __init__(self, message: str, rank: int | None = None, worker_error: str = ""):
        super().__init__(message)
        self.rank = rank
        self.worker_error = worker_error


@dataclass
class SlurmConfig:
    """Slurm resources for ``launcher: slurm`` (``cluster: local|debug`` runs without Slurm)."""

    folder: str = "data/09_slurm"
    job_name: str = "sv-kedro-train"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    cpus_per_task: int = 8
    gpus_per_node: int | None = None
    mem_gb: int | None = None
    rdzv_port: int = 29500
    cluster: str | None = None
    additional_parameters: dict[str, Any] = field(default_factory=dict)

    def submitit_parameters(self, name: str, nodes: int) -> dict[str, Any]:
        """``AutoExecutor.update_parameters`` keywords: one task per node, these resources."""
        parameters: dict[str, Any] = {
            "name": name,
            "nodes": nodes,
            "tasks_per_node": 1,
            "cpus_per_task": self.cpus_per_task,
            "timeout_min": self.time_min,
        }
        if self.gpus_per_node is not None:
            parameters["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            parameters["mem_gb"] = self.mem_gb
        for key in ("partition", "account", "qos"):
            if getattr(self, key) is not None:
                parameters[f"slurm_{key}"] = getattr(self, key)
        if self.additional_parameters:
            parameters["slurm_additional_parameters"] = dict(self.additional_parameters)
        return parameters


@dataclass
class DistributedConfig:
    """How a training node starts its workers (from ``conf/<env>/parameters``).

    Attributes:
        launcher: ``local`` (in-process or elastic on this host / these hosts) or ``slurm``.
        nproc_per_node: workers per host; ``None`` = the GPU count (1 on a CPU-only host).
        nnodes, node_rank: hosts in the job and this host's index (node 0 hosts the store).
        rdzv_endpoint: ``host:port`` of the rendezvous (required with ``nnodes > 1``).
        rdzv_backend: ``c10d`` (default) or ``static``.
        rdzv_id: job id shared by all hosts; ``None`` generates one (single host only).
        device: ``auto`` | ``cpu`` | ``cuda``; CPU workers use gloo, GPU workers nccl.
        timeout_s: collective timeout (``init_process_group(timeout=...)``).
        rdzv_timeout_s: how long hosts wait for each other at the rendezvous.
        max_restarts: elastic restarts of the whole worker group before failing.
        monitor_interval_s: how often the agent checks its workers.
        omp_num_threads: ``OMP_NUM_THREADS`` of workers (default 1 with several per host).
    """

    launcher: str = "local"
    nproc_per_node: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_backend: str = "c10d"
    rdzv_id: str | None = None
    device: str = "auto"
    timeout_s: float = 1800.0
    rdzv_timeout_s: int = 900
    max_restarts: int = 0
    monitor_interval_s: float = 0.2
    omp_num_threads: int | None = None
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        if isinstance(self.slurm, Mapping):
            self.slurm = _from_mapping(SlurmConfig, self.slurm, "distributed.slurm")
        if self.launcher not in LAUNCHERS:
            raise ValueError(
                f"distributed.launcher must be one of {list(LAUNCHERS)}, got {self.launcher!r}"
            )
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise ValueError(f"distributed.nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(
                f"distributed: node_rank={self.node_rank} must lie in [0, nnodes={self.nnodes})"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"distributed.device must be auto|cpu|cuda, got {self.device!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DistributedConfig:
        return _from_mapping(cls, values or {}, "distributed")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_nproc(self) -> int:
        """``nproc_per_node``, defaulting to the visible GPU count (1 without CUDA)."""
        if self.nproc_per_node is not None:
            return self.nproc_per_node
        if self.device != "cpu" and torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
        return 1


def _from_mapping(cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**coerce_scalars(cls, values, where))


def launch(entrypoint: Callable[..., Any], args: tuple[Any, ...], config: DistributedConfig) -> Any:
    """Run ``entrypoint(*args)`` on every worker; return global rank 0's result.

    On hosts other than node 0 the lowest local rank's result is returned.
    """
    if config.launcher == "slurm":
        return _launch_slurm(entrypoint, args, config)
    nproc = config.resolved_nproc()
    if nproc == 1 and config.nnodes == 1:
        return entrypoint(*args)
    return _launch_elastic(entrypoint, args, config, nproc)


def _launch_elastic(
    entrypoint: Callable[..., Any], args: tuple[Any, ...], config: DistributedConfig, nproc: int
) -> Any:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if config.nnodes > 1 and not (config.rdzv_endpoint and config.rdzv_id):
        raise ValueError(
            f"distributed: nnodes={config.nnodes} needs rdzv_endpoint (host:port of node 0) "
            "and rdzv_id (the same on every host)"
        )
    rdzv_configs: dict[str, Any] = {"timeout": config.rdzv_timeout_s}
    if config.rdzv_backend == "static":
        rdzv_configs["rank"] = config.node_rank
    elif config.nnodes > 1:
        rdzv_configs["is_host"] = config.node_rank == 0
    launch_config = LaunchConfig(
        min_nodes=config.nnodes,
        max_nodes=config.nnodes,
        nproc_per_node=nproc,
        run_id=config.rdzv_id or f"sv-kedro-{uuid.uuid4().hex[:12]}",
        rdzv_backend=config.rdzv_backend,
        # port 0: the agent picks a free port (torchrun --standalone does the same)
        rdzv_endpoint=config.rdzv_endpoint or "localhost:0",
        rdzv_configs=rdzv_configs,
        max_restarts=config.max_restarts,
        monitor_interval=config.monitor_interval_s,
        start_method="spawn",
    )
    threads = config.omp_num_threads or (1 if nproc > 1 else None)
    logger.info(
        "launching %d worker(s) on node %d/%d (%s rendezvous at %s)",
        nproc,
        config.node_rank,
        config.nnodes,
        config.rdzv_backend,
        launch_config.rdzv_endpoint,
    )
    try:
        with _environment({"OMP_NUM_THREADS": str(threads)} if threads else {}):
            outputs = elastic_launch(launch_config, entrypoint)(*args)
    except ChildFailedError as error:
        raise _as_training_failed(error) from error
    return outputs[min(outputs)] if outputs else None


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables that spawned workers inherit; restore them afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _as_training_failed(error: Any) -> TrainingFailed:
    """The first (root-cause) worker failure as a ``TrainingFailed`` with its traceback."""
    rank, failure = error.get_first_failure()
    data = failure.error_file_data.get("message") if failure.error_file_data else None
    traceback_text = ""
    if isinstance(data, Mapping):
        worker_error = str(data.get("message", failure.message))
        traceback_text = str((data.get("extraInfo") or {}).get("py_callstack", ""))
    else:
        worker_error = str(failure.message)
    others = sorted(r for r in error.failures if r != rank)
    message = (
        f"training worker rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) "
        f"failed with exit code {failure.exitcode}: {worker_error}"
    )
    if others:
        message += f"\n(ranks {others} failed too, after it)"
    if traceback_text:
        message += f"\n--- worker traceback ---\n{traceback_text.rstrip()}"
    return TrainingFailed(message, rank=rank, worker_error=worker_error)


def _launch_slurm(
    entrypoint: Callable[..., Any], args: tuple[Any, ...], config: DistributedConfig
) -> Any:
    import submitit

    slurm = config.slurm
    nproc = config.nproc_per_node or slurm.gpus_per_node or 1
    executor = submitit.AutoExecutor(folder=slurm.folder, cluster=slurm.cluster)
    executor.update_parameters(**slurm.submitit_parameters(slurm.job_name, config.nnodes))
    node_config = replace(config, launcher="local", nproc_per_node=nproc)
    job = executor.submit(slurm_node_main, entrypoint, args, node_config)
    logger.info(
        "submitted Slurm job %s (%d node(s)); logs in %s", job.job_id, config.nnodes, slurm.folder
    )
    try:
        results = job.results()
    except Exception as error:  # submitit raises FailedJobError / UncompletedJobError
        raise TrainingFailed(
            f"Slurm job {job.job_id} failed: {error}", worker_error=str(error)
        ) from error
    return results[0]


def slurm_node_main(
    entrypoint: Callable[..., Any], args: tuple[Any, ...], config: DistributedConfig
) -> Any:
    """What each Slurm task runs: the elastic launch with the node list Slurm assigned."""
    import submitit

    environment = submitit.JobEnvironment()
    nodes = environment.num_nodes
    node_config = replace(
        config,
        nnodes=nodes,
        node_rank=environment.node,
        rdzv_endpoint=f"{environment.hostnames[0]}:{config.slurm.rdzv_port}" if nodes > 1 else None,
        rdzv_id=f"slurm-{environment.job_id}",
    )
    return launch(entrypoint, args, node_config)
