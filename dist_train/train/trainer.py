"""The sharded model, its optimizers, one training step, and evaluation.

Runs inside an initialized ``torch.distributed`` process group (gloo on CPU, nccl on GPU);
it does not know who created it (Ray Train, torch.multiprocessing or torchrun).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv, ShardingEnv2D
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from dist_train.config.schema import JobConfig
from dist_train.data.batch import Batch, BatchBuilder
from dist_train.embedding.init import init_bound, init_embedding_tables, torch_seed
from dist_train.embedding.layout import EmbeddingLayout, build_layout
from dist_train.train.dense_parallel import dense_data_parallel
from dist_train.train.metrics import EvalMetrics
from dist_train.train.pipelining import pipelined_steps
from dist_train.train.replicas import (
    GroupLayout,
    ReplicaSync,
    group_env,
    on_rank_devices,
    place_in_group,
)
from dist_train.train.sharding import JobPlan, build_model, make_sharder, plan_job
from dist_train.train.shared_tables import read_shared_tables_as_one_feature
from dist_train.train.tables_in_c import run_tables_in_c
from dist_train.train.uneven_row_wise import enable_uneven_row_wise
from dist_train.train.unpooled_row_wise import enable_unpooled_row_wise

# torch optimizers by `train.dense_optimizer` (and a table optimizer torch runs)
DENSE_OPTIMIZERS = {
    "adagrad": torch.optim.Adagrad,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def dense_optimizer(cfg: JobConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The job's dense optimizer (``train.dense_optimizer``, ``train.dense_learning_rate``)
    over ``params``: on CPU torch's fused kernel, one pass over each parameter where the
    default runs an op per term (the default job's Adagrad step at 1 to 4 ranks: 0.67-0.93
    against 0.38-0.59 ms, docs/performance_log.md, "The dense optimizer fused"). Fused kernels
    refuse sparse gradients: ``params`` must have dense ones. Param groups are not
    checkpointed (TorchRec's KeyedOptimizer), so a run on other devices chooses afresh."""
    params = list(params)
    on_cpu = bool(params) and all(p.device.type == "cpu" for p in params)
    return DENSE_OPTIMIZERS[cfg.train.dense_optimizer](
        params, lr=cfg.train.dense_learning_rate, fused=on_cpu or None
    )


def make_batch_builder(cfg: JobConfig, layout: EmbeddingLayout) -> BatchBuilder:
    """The batch builder of a job (its columns, layout and dense transform)."""
    return BatchBuilder(
        layout,
        cfg.features,
        cfg.data.resolved_dense_columns(),
        cfg.data.label_column,
        cfg.data.dense_transform,
        cfg.data.row_id_column,
        _dense_origin(cfg),
    )


def _dense_origin(cfg: JobConfig) -> str:
    """Where the job's dense columns come from, for an error naming one that is missing."""
    if cfg.data.dense_columns is not None:
        return "a dense column of data.dense_columns"
    n = cfg.data.synthetic.num_dense
    return (
        f"data.dense_columns is unset: it stands for the generator's I1..I{n} "
        "(data.synthetic.num_dense); list your data's dense columns, or [] for none"
    )


def _torch_optimizers(
    cfg: JobConfig, params: dict[str, torch.nn.Parameter]
) -> list[KeyedOptimizerWrapper]:
    """torch optimizers for the parameters not stepped inside backward.

    The MLPs get the dense optimizer; data_parallel tables and tables on the ``dense`` kernel
    (an optimizer FBGEMM lacks on this device, e.g. Adam on CPU) get the embedding optimizer.
    """
    emb = {k: p for k, p in params.items() if k.startswith("sparse_arch.")}
    mlp = {k: p for k, p in params.items() if k not in emb}
    out = [KeyedOptimizerWrapper(mlp, lambda ps: dense_optimizer(cfg, ps))]
    if emb:
        o = cfg.embedding.optimizer
        # data_parallel tables (and tables on the dense kernel) keep the job's optimizer:
        # TorchRec's dense RowWiseAdagrad keeps one accumulator per row, like FBGEMM's fused one
        emb_cls = RowWiseAdagrad if o.type == "rowwise_adagrad" else DENSE_OPTIMIZERS[o.type]
        kwargs = {"lr": o.learning_rate, "weight_decay": o.weight_decay}
        if o.type != "sgd":
            kwargs["eps"] = o.eps
        out.append(KeyedOptimizerWrapper(emb, lambda ps: emb_cls(ps, **kwargs)))
    return out


@dataclass
class Trainer:
    """A DistributedModelParallel CTR model with fused embedding + dense optimizers."""

    cfg: JobConfig
    layout: EmbeddingLayout
    model: DistributedModelParallel
    optimizer: CombinedOptimizer
    plan: JobPlan
    device: torch.device
    replicas: ReplicaSync | None = None  # 2D: merges the replicas' embedding updates
    steps_done: int = 0  # global steps trained (a resumed run starts at its checkpoint's)
    _unsynced_steps: int = 0

    @classmethod
    def build(
        cls,
        cfg: JobConfig,
        job_plan: JobPlan | None = None,
        device: torch.device | None = None,
        local_world_size: int | None = None,
    ) -> Trainer:
        """Build, shard (by ``job_plan``, else a plan made here) and initialize the model."""
        device = device or torch.device("cpu")
        world_size = dist.get_world_size()
        if job_plan is None:
            job_plan = plan_job(cfg, world_size, local_world_size or world_size, device.type)
        if job_plan.world_size != world_size:
            raise ValueError(
                f"the plan is for {job_plan.world_size} ranks, the process group has {world_size}"
            )
        layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
        # identical dense weights on every rank and world size
        torch.manual_seed(torch_seed(cfg.seed))
        model = build_model(cfg, layout)
        sharder = make_sharder(cfg, device.type)
        env: ShardingEnv = ShardingEnv.from_process_group(dist.group.WORLD)  # type: ignore[arg-type]
        plan = job_plan.sharding_plan
        # tables sharded in groups (data_parallel ones are replicated over the world, in DDP)
        sharded = {t for t, p in job_plan.placements().items() if p["type"] != "data_parallel"}
        if job_plan.is_2d:
            groups = GroupLayout(world_size, job_plan.sharding_group_size)
            model.scale_embedding_grads(1.0 / groups.num_groups, sharded, device)
            env = group_env(groups, device)
            plan = place_in_group(plan, groups, dist.get_rank())
        if device.type == "cuda":  # each shard on the GPU its rank runs on
            index = torch.cuda.current_device() if device.index is None else device.index
            devices: list[str] = [""] * world_size
            dist.all_gather_object(devices, f"cuda:{index}")
            plan = on_rank_devices(plan, devices)
        dmp = DistributedModelParallel(
            model,
            env=env,
            device=device,
            plan=plan,
            sharders=[sharder],  # type: ignore[list-item]
            data_parallel_wrapper=dense_data_parallel(world_size),
        )
        enable_uneven_row_wise(dmp)
        enable_unpooled_row_wise(dmp, job_plan.unpooled_tables)  # replaces uneven's input dist
        c_kernels = cfg.sharding.kernels == "auto"
        read_shared_tables_as_one_feature(dmp, c_kernels)
        if c_kernels:
            run_tables_in_c(dmp)
        tables = {t.name: (t.num_rows, t.dim) for t in layout.tables}
        init_embedding_tables(dmp, tables, cfg.seed, init_bound(cfg.embedding))
        optimizer = CombinedOptimizer(
            [
                dmp.fused_optimizer,
                *_torch_optimizers(cfg, dict(in_backward_optimizer_filter(dmp.named_parameters()))),
            ]
        )
        sync = None
        if isinstance(env, ShardingEnv2D) and sharded:
            o = cfg.embedding.optimizer
            sync = ReplicaSync(dmp, env, cfg.sharding.sync_every, o.type, o.learning_rate, o.eps)
        return cls(cfg, layout, dmp, optimizer, job_plan, device, sync)

    def batch_builder(self) -> BatchBuilder:
        return make_batch_builder(self.cfg, self.layout)

    def train_steps(self, batches: Iterator[Batch]) -> Generator[tuple[Batch, float], None, None]:
        """Train on each of ``batches`` in order; yields each batch and its local loss once its
        step is done. Through TorchRec's train pipeline if :attr:`pipelined`
        (:mod:`dist_train.train.pipelining`), else one :meth:`train_step` at a time."""
        if not self.pipelined:
            for batch in batches:
                yield batch, self.train_step(batch)
            return
        steps = pipelined_steps(self.model, self.optimizer, self.device, batches)
        for batch, loss in steps:
            self._step_done()
            yield batch, loss

    @property
    def pipelined(self) -> bool:
        """Whether :meth:`train_steps` runs TorchRec's train pipeline (``train.pipeline``)."""
        wanted = self.cfg.train.pipeline
        return self.device.type == "cuda" if wanted == "auto" else wanted

    def train_step(self, batch: Batch) -> float:
        """Forward, backward (embedding rows update inside it), dense step; the local loss."""
        if not self.model.training:  # predict() left it in eval; else skip the walk over modules
            self.model.train()
        batch = batch.to(self.device, non_blocking=True)  # pinned on GPU ranks (Epochs)
        logits = self.model(batch.dense, batch.sparse)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._step_done()
        return float(loss.detach())

    def _step_done(self) -> None:
        self.steps_done += 1
        self._unsynced_steps += 1
        if self.replicas is not None and self.replicas.due(self.steps_done):
            self.sync_replicas()

    def resumed_at(self, step: int) -> None:
        """A checkpoint of global step ``step`` was loaded into the model."""
        self.steps_done = step
        self._unsynced_steps = 0
        if self.replicas is not None:
            self.replicas.reset()

    def sync_replicas(self) -> None:
        """2D: merge the replicas' embedding updates now, if a step ran since the last merge
        (before a checkpoint, at the end). A no-op in 1D."""
        if self.replicas is not None and self._unsynced_steps:
            self.replicas.sync()
            self._unsynced_steps = 0

    @torch.no_grad()
    def logits(self, batch: Batch) -> np.ndarray:
        """The model's logits of ``batch`` (float32)."""
        self.model.eval()
        batch = batch.to(self.device)
        return self.model(batch.dense, batch.sparse).float().cpu().numpy()

    def predict(self, batch: Batch) -> np.ndarray:
        """Click probabilities of ``batch`` (float64: a float32 sigmoid is 1.0 above a
        logit of about 17)."""
        return torch.sigmoid(torch.from_numpy(self.logits(batch)).double()).numpy()

    def evaluate(self, batches: Iterable[tuple[Batch, int]]) -> EvalMetrics:
        """Metrics over all ranks' ``(batch, num_valid_rows)``; the padding rows are dropped."""
        logits, labels = [], []
        for batch, valid in batches:
            logits.append(self.logits(batch)[:valid])
            labels.append(batch.labels.numpy()[:valid])
        local = (
            (np.concatenate(logits), np.concatenate(labels))
            if logits
            else (
                np.zeros(0, np.float32),
                np.zeros(0, np.float32),
            )
        )
        # rank 0 alone sorts every prediction (the AUC); the others get its figures
        first = dist.get_rank() == 0
        gathered: list[tuple[np.ndarray, np.ndarray] | None] | None = (
            [None] * dist.get_world_size() if first else None
        )
        dist.gather_object(local, gathered, dst=0)
        metrics: list[EvalMetrics | None] = [None]
        if gathered is not None:
            all_logits = np.concatenate([g[0] for g in gathered if g is not None])
            all_labels = np.concatenate([g[1] for g in gathered if g is not None])
            metrics[0] = EvalMetrics.of(all_labels, all_logits)
        dist.broadcast_object_list(metrics, src=0)
        assert metrics[0] is not None
        return metrics[0]
