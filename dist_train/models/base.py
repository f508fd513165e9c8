"""What every CTR model here shares: the embedding tables and the dense building blocks.

The tables live in ``sparse_arch`` (one ``EmbeddingBagCollection``, so checkpoint keys are
the same for every model kind); :meth:`CTRModel.embed` returns one d-vector per
(feature, chunk), a feature's embedding being the concatenation of its chunk vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor, KeyedTensor

from dist_train.embedding.layout import EmbeddingLayout
from dist_train.models.linear import Linear


class _FusedAttentionOnMeta(TorchFunctionMode):
    """Attention on the meta device as the CPU's fused kernel runs it. torch's meta path is
    the plain computation, which keeps the scores for the backward (``[B, heads, n, n]``,
    twice), where the fused kernels of the CPU and CUDA keep the output and one softmax
    statistic a row: counted on meta, the default AutoInt's activations came out 2.6 times
    a CPU rank's (docs/planner.md, "The dense network's activations")."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if (
            func is F.scaled_dot_product_attention
            and len(args) == 3
            and not kwargs
            and args[0].device.type == "meta"
        ):
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(*args)[0]
        return func(*args, **(kwargs or {}))


def mlp(sizes: list[int], final_activation: bool) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ReLU between (and after, if asked).
    Each layer a ReLU follows applies it itself (:class:`~dist_train.models.linear.Linear`'s
    ``relu``); an ``nn.Identity`` keeps the ReLU's place, and so the layers' indices and
    checkpoint keys."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        relu = i < len(sizes) - 2 or final_activation
        layers.append(Linear(sizes[i], sizes[i + 1], relu=relu))
        if relu:
            layers.append(nn.Identity())
    return nn.Sequential(*layers)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``scale`` (a number, or one per column)."""
    if isinstance(scale, float) and scale == 1.0:
        return x
    return cast(torch.Tensor, _ScaleGrad.apply(x, scale))


# A leaf of torch.fx traces: TorchRec's train pipeline traces the model with the tables'
# output symbolic, and a branch on its keys would fail there.
@torch.fx.wrap
def in_layout_order(pooled: KeyedTensor, keys: list[str]) -> torch.Tensor:
    """The pooled vectors ``[B, sum of widths]`` in the order of ``keys``. Where the tables'
    output already is in that order (one unified table) its values as they are: a cat of
    the per-key slices (and a split of the gradient back) would copy them twice a step."""
    if pooled.keys() == keys:
        return pooled.values()
    # tables group keys by table; put them back in feature/chunk order
    by_key = pooled.to_dict()
    return torch.cat([by_key[k] for k in keys], dim=1)


class CTRModel(nn.Module):
    """Embedding tables plus a network over them; ``forward(dense, sparse)`` -> logits ``[B]``."""

    def __init__(self, layout: EmbeddingLayout, embedding_device: torch.device | str) -> None:
        super().__init__()
        self.layout_keys = layout.key_names
        self.dim = layout.dim
        self.num_vectors = layout.num_vectors
        self.sparse_arch = EmbeddingBagCollection(
            tables=layout.embedding_bag_configs(), device=torch.device(embedding_device)
        )
        # 2D: see scale_embedding_grads; a number, or one per column of the vectors
        self.embedding_grad_scale: float | torch.Tensor = 1.0
        self._key_tables = [(k.table, k.dim) for k in layout.keys]  # in layout_keys' order

    def scale_embedding_grads(
        self, scale: float, tables: Collection[str], device: torch.device
    ) -> None:
        """Multiply the gradients of the vectors of ``tables`` (only) by ``scale``.

        2D: TorchRec divides the gradients of tables sharded in a group by the group's size;
        1 / replicas makes that the world size, as in 1D (dist_train.train.replicas). Not
        replicated (data_parallel) tables: DDP already averages theirs over the world.
        """
        columns = [scale if t in tables else 1.0 for t, w in self._key_tables for _ in range(w)]
        uniform = len(set(columns)) == 1  # a number: no per-column multiply where all match
        self.embedding_grad_scale = columns[0] if uniform else torch.tensor(columns, device=device)

    @property
    def interaction_elements_per_sample(self) -> int:
        """Per-example work the parameter count misses (pairwise products), for the planner."""
        return 0

    @property
    def interaction_least_elements_per_sample(self) -> int:
        """The fewest of those the interaction needs (for the roofline's floor)."""
        return self.interaction_elements_per_sample

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        # embeddings before the network: autograd runs the nodes made last first, so the
        # network's gradients, the last of DDP's bucket, are ready before the embeddings'
        # backward, and DDP's all-reduce runs while the embeddings exchange gradients and
        # update their rows (docs/performance_log.md, "Embeddings first")
        return self.network(dense, self.embed(sparse))

    def network(self, dense: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` from the dense features ``[B, num_dense]`` and the chunk vectors
        ``[B, num_vectors, dim]``: what the kind computes above the tables."""
        raise NotImplementedError

    @property
    def dense_parameters(self) -> int:
        """The parameters of the network above the tables (every one but the tables')."""
        return sum(
            p.numel() for name, p in self.named_parameters() if not name.startswith("sparse_arch.")
        )

    def activation_bytes_per_sample(self, num_dense: int) -> float:
        """Bytes :meth:`network` keeps for its backward an example (the tensors autograd
        saves; weights it saves cancel out), counted on two small batches on the network's
        device (on the meta device, as the planner's model is, nothing is computed, and
        attention keeps what the fused kernels keep: :class:`_FusedAttentionOnMeta`)."""
        device = next(
            (p.device for n, p in self.named_parameters() if not n.startswith("sparse_arch.")),
            torch.device("meta"),
        )

        def saved(batch: int) -> int:
            held: dict[int, torch.Tensor] = {}  # by id, each once: alive until counted

            def keep(t: torch.Tensor) -> None:
                # the graph keeps None, not the tensor: a tensor saved by its own grad_fn
                # would make a cycle only the garbage collector frees (or the interpreter's
                # exit, in native code)
                held[id(t)] = t

            vectors = torch.zeros(batch, self.num_vectors, self.dim, device=device)
            dense = torch.zeros(batch, num_dense, device=device)

            def unpacked(_: None) -> torch.Tensor:
                raise AssertionError("the count runs no backward")

            with torch.autograd.graph.saved_tensors_hooks(keep, unpacked), _FusedAttentionOnMeta():
                self.network(dense, vectors.requires_grad_())  # its graph freed at once
            return sum(t.numel() * t.element_size() for t in held.values())

        return (saved(16) - saved(8)) / 8

    def embed(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """The chunk vectors ``[B, num_vectors, dim]`` in feature/chunk order."""
        emb = in_layout_order(self.sparse_arch(sparse), self.layout_keys)
        emb = scale_grad(emb, self.embedding_grad_scale)
        return emb.reshape(emb.shape[0], self.num_vectors, self.dim)
