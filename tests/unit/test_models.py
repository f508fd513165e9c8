"""The model kinds: shapes, the options' parameter counts, config checks, gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torchrec import KeyedJaggedTensor, KeyedTensor
from torchrec.distributed.train_pipeline.tracing import Tracer

from dist_train.config.errors import ConfigError
from dist_train.config.load import DEFAULT_CONFIG, load_config
from dist_train.config.schema import ModelConfig
from dist_train.embedding.layout import build_layout
from dist_train.models import MODELS, CTRModel, create_model
from dist_train.models import linear as linear_module
from dist_train.models.base import in_layout_order, mlp
from dist_train.models.dcn import DCNv2
from dist_train.models.dlrm import DotInteraction
from dist_train.models.linear import ONEDNN_MIN_WEIGHTS, Linear
from planners.gemm import MKL_HAS_AVX512, ONEDNN_GEMM, cpu_vendor
from planners.types import PlanningError
from tests.conftest import small_config


def _model_and_batch(
    tmp_path: Path, model: ModelConfig, overrides: list[str] | None = None, num_dense: int = 3
) -> tuple[CTRModel, torch.Tensor, KeyedJaggedTensor]:
    """A small job's model (tables on the CPU) and 4 examples, one id per key."""
    cfg = small_config(tmp_path, overrides)
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    torch.manual_seed(0)
    net = create_model(layout, num_dense, model, embedding_device="cpu")
    ids = torch.randint(0, 50, (4 * len(layout.key_names),))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=layout.key_names, values=ids, lengths=torch.ones(ids.numel(), dtype=torch.int64)
    )
    return net, torch.rand(4, num_dense), kjt


@pytest.mark.parametrize("num_dense", [3, 0])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_kind_gives_one_logit_per_example_and_gradients_everywhere(
    tmp_path: Path, kind: str, num_dense: int
) -> None:
    """Without dense columns too: DLRM's bottom MLP of no inputs gave a dense vector of
    zeros that never trained."""
    net, dense, kjt = _model_and_batch(tmp_path, ModelConfig(kind=kind), num_dense=num_dense)
    logits = net(dense, kjt)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    logits.sum().backward()
    for name, p in net.named_parameters():
        if p.numel():  # (AutoInt's tokens of no dense columns hold nothing)
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert net.interaction_elements_per_sample > 0


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_kinds_network_takes_a_batch_of_no_examples(tmp_path: Path, kind: str) -> None:
    """AutoInt's attention sized its heads by view(..., -1), which no 0-example batch sizes
    (a helper's audit); DLRM and DCN-v2 took one."""
    net, _, _ = _model_and_batch(tmp_path, ModelConfig(kind=kind))
    layout = build_layout(small_config(tmp_path).embedding, small_config(tmp_path).features, 0)
    vectors = torch.zeros(0, layout.num_vectors, layout.dim)
    assert net.network(torch.zeros(0, 3), vectors).shape == (0,)


@pytest.mark.parametrize(
    ("kind", "dense_parameter"), [("dlrm", "dense_arch.0.weight"), ("autoint", "dense_tokens")]
)
def test_the_dense_gradients_are_ready_before_the_embeddings_backward(
    tmp_path: Path, kind: str, dense_parameter: str
) -> None:
    """DDP's all-reduce starts once the dense gradients are all there; the embeddings'
    backward (exchanges, row updates) then runs beside it instead of before it."""
    net, dense, kjt = _model_and_batch(tmp_path, ModelConfig(kind=kind))
    params = dict(net.named_parameters())
    order: list[str] = []
    tables = [n for n in params if n.startswith("sparse_arch.")]
    for name in [dense_parameter, *tables]:
        params[name].register_hook(lambda grad, name=name: order.append(name))
    net(dense, kjt).sum().backward()
    assert order[0] == dense_parameter and set(order[1:]) == set(tables)


def test_in_layout_order_reads_ordered_tables_as_they_are_and_reorders_the_rest() -> None:
    values = torch.arange(24.0).view(2, 12)
    # keys of widths 4, 2 and 6, the order a per-table output would list them in
    pooled = KeyedTensor(keys=["a", "b", "c"], length_per_key=[4, 2, 6], values=values)
    same = in_layout_order(pooled, ["a", "b", "c"])
    assert same.data_ptr() == values.data_ptr()  # no copy
    moved = in_layout_order(pooled, ["c", "a", "b"])
    torch.testing.assert_close(moved, torch.cat([values[:, 6:], values[:, :6]], dim=1))


def _forward_and_backward(
    layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, threads: int
) -> tuple[str, list[tuple[int, ...]], list[torch.Tensor | None]]:
    """``layer``'s grad_fn, its input gradient's strides as it made it, and its output and
    gradients (input, weight, bias) for input ``x`` (a gradient if it has one)."""
    kept = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xs = x.detach().clone().requires_grad_(x.requires_grad)
        strides: list[tuple[int, ...]] = []
        inner = xs * 1.0  # not a leaf: its gradient arrives as the layer made it
        if inner.requires_grad:
            inner.register_hook(lambda g: strides.append(g.stride()))
        out = layer(inner)
        out.backward(grad)
    finally:
        torch.set_num_threads(kept)
    return (
        type(out.grad_fn).__name__,
        strides,
        [out.detach(), xs.grad, layer.weight.grad, layer.bias.grad],
    )


# (in, out) features, input needs a gradient: 796 x 16 and 13 x 128 are small; 796 x 128 and
# 800 x 128 are large enough for oneDNN
LAYERS = [(796, 16, True), (800, 16, True), (13, 128, False), (796, 128, True), (800, 128, True)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("width", "out", "needs_grad"), LAYERS)
def test_linear_matches_nn_linear(width: int, out: int, needs_grad: bool, threads: int) -> None:
    """Same parameters and state dict as nn.Linear. Large layers on an AVX-512 CPU take
    oneDNN: within a few times nn.Linear's error against float64, and the same bits run
    twice. The rest equal nn.Linear to the bit: rows of 796 that need a gradient through the
    aligned input gradient (a view of the padded product), the others through nn.Linear's
    own ops."""
    torch.manual_seed(0)
    ours, theirs = Linear(width, out), torch.nn.Linear(width, out)
    theirs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(2048, width).requires_grad_(needs_grad)
    grad = torch.randn(2048, out)
    kind, strides, found = _forward_and_backward(ours, x, grad, threads)
    _, _, expected = _forward_and_backward(theirs, x, grad, threads)
    if not needs_grad:
        assert found[1] is None and expected[1] is None
    onednn = ONEDNN_GEMM and width * out >= ONEDNN_MIN_WEIGHTS
    if onednn:
        assert kind == "_LinearThroughOneDNNBackward"
        reference = torch.nn.Linear(width, out).double()
        reference.load_state_dict(ours.state_dict())
        _, _, exact = _forward_and_backward(reference, x.double(), grad.double(), threads)
        for mine, torchs, best in zip(found, expected, exact, strict=True):
            assert mine is not None and torchs is not None and best is not None
            limit = (torchs.double() - best).abs().max().item()
            assert (mine.double() - best).abs().max().item() <= 8 * limit + 1e-6
        ours.zero_grad()
        assert all(
            torch.equal(a, b)  # type: ignore[arg-type]
            for a, b in zip(found, _forward_and_backward(ours, x, grad, threads)[2], strict=True)
        )
        return
    aligned = needs_grad and width % 16 != 0
    assert kind.startswith("_LinearWithAligned") == aligned
    if aligned:  # a view of the padded product: no copy
        assert strides == [(800, 1)]
    for mine, torchs in zip(found, expected, strict=True):
        assert (mine is None and torchs is None) or torch.equal(mine, torchs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("width", "out", "needs_grad"), LAYERS)
def test_linear_under_autocast_is_nn_linear(width: int, out: int, needs_grad: bool) -> None:
    """Under CPU autocast every layer is nn.Linear's: bfloat16 out, the same bits, and
    gradients (neither custom path has a bfloat16 backward)."""
    torch.manual_seed(0)
    ours, theirs = Linear(width, out), torch.nn.Linear(width, out)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(64, width).requires_grad_(needs_grad)
    results = []
    for layer in (ours, theirs):
        xs = x.detach().clone().requires_grad_(needs_grad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xs)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        results.append([y, xs.grad, layer.weight.grad, layer.bias.grad])
    for mine, torchs in zip(*results, strict=True):
        assert (mine is None and torchs is None) or torch.equal(mine, torchs)


def test_the_cpu_vendor_is_read_from_cpuinfo(tmp_path: Path) -> None:
    """Intel's CPUs keep MKL (its AVX-512 kernels): the vendor from Linux's cpuinfo, "" where
    the file is missing or names none."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    assert cpu_vendor(str(cpuinfo)) == "GenuineIntel"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n")
    assert cpu_vendor(str(cpuinfo)) == "AuthenticAMD"
    cpuinfo.write_text("processor\t: 0\n")
    assert cpu_vendor(str(cpuinfo)) == ""
    assert cpu_vendor(str(tmp_path / "missing")) == ""
    if MKL_HAS_AVX512:
        assert not ONEDNN_GEMM


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("needs_grad", [True, False])
def test_the_onednn_path_matches_float64(
    monkeypatch: pytest.MonkeyPatch, bias: bool, needs_grad: bool
) -> None:
    """The oneDNN layer on any CPU with oneDNN (forced on): with and without a bias, an input
    with or without a gradient, a transposed output gradient; no second derivative."""
    monkeypatch.setattr(linear_module, "ONEDNN_GEMM", True)
    torch.manual_seed(0)
    ours = Linear(512, 256, bias=bias)
    reference = torch.nn.Linear(512, 256, bias=bias).double()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(300, 512)
    grad = torch.randn(256, 300).t()  # not contiguous, as a transposed product hands it over
    xs, xd = x.clone().requires_grad_(needs_grad), x.double().requires_grad_(needs_grad)
    out, exact = ours(xs), reference(xd)
    assert type(out.grad_fn).__name__ == "_LinearThroughOneDNNBackward"
    out.backward(grad)
    exact.backward(grad.double())
    pairs = [(out, exact), (ours.weight.grad, reference.weight.grad)]
    if bias:
        pairs.append((ours.bias.grad, reference.bias.grad))
    if needs_grad:
        pairs.append((xs.grad, xd.grad))
    else:
        assert xs.grad is None
    for mine, best in pairs:
        assert mine is not None and best is not None
        torch.testing.assert_close(mine.double(), best, rtol=1e-4, atol=1e-4)
    twice = ours(x.clone().requires_grad_(True))
    (first,) = torch.autograd.grad(twice.sum(), ours.weight, create_graph=True)
    # no graph of the first derivative: an error, not a silently wrong second one
    with pytest.raises(RuntimeError, match=r"does not require grad|once_differentiable"):
        first.sum().backward()


class _ThenReLU(torch.nn.Module):
    """``layer`` then ``nn.ReLU``, its parameters where ``_forward_and_backward`` reads them."""

    def __init__(self, layer: torch.nn.Linear) -> None:
        super().__init__()
        self.layer, self.weight, self.bias = layer, layer.weight, layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu(self.layer(x))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("width", "out", "needs_grad"), LAYERS)
def test_a_layer_with_its_relu_is_the_layer_then_nn_relu(
    width: int, out: int, needs_grad: bool, threads: int
) -> None:
    """``relu=True`` gives the bits of the same layer followed by ``nn.ReLU``, forward and
    every gradient, on each path (through oneDNN the ReLU is its post-op and the gradient
    is masked and transposed in one pass); the state dict is unchanged."""
    torch.manual_seed(0)
    fused, plain = Linear(width, out, relu=True), Linear(width, out)
    plain.load_state_dict(fused.state_dict())
    assert list(fused.state_dict()) == ["weight", "bias"]
    x = torch.randn(2048, width).requires_grad_(needs_grad)
    grad = torch.randn(2048, out)
    grad[::7] = 0.0  # gradients of zero too, as the layer above's ReLU passes them
    kind, _, found = _forward_and_backward(fused, x, grad, threads)
    _, _, expected = _forward_and_backward(_ThenReLU(plain), x, grad, threads)
    if ONEDNN_GEMM and width * out >= ONEDNN_MIN_WEIGHTS:
        assert kind == "_LinearReLUThroughOneDNNBackward"
    assert (found[0] > 0).any() and (found[0] == 0).any()  # the ReLU cut some, not all
    for mine, theirs in zip(found, expected, strict=True):
        assert (mine is None and theirs is None) or torch.equal(mine, theirs)  # type: ignore[arg-type]


def test_an_mlps_relus_keep_their_places_and_the_keys() -> None:
    """Each ReLU runs in the layer below it; an Identity keeps its index, so the state dict
    keys (and checkpoints) are the layers' of Linear, ReLU, Linear, ..."""
    net = mlp([796, 128, 64, 1], final_activation=False)
    assert [type(m).__name__ for m in net] == ["Linear", "Identity", "Linear", "Identity", "Linear"]
    assert [m.relu for m in net if isinstance(m, Linear)] == [True, True, False]
    assert list(net.state_dict()) == [f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]


def test_an_mlp_of_linear_layers_traces_with_torch_fx() -> None:
    net = mlp([796, 128, 1], final_activation=False)
    traced = torch.fx.symbolic_trace(net)
    x = torch.randn(4, 796)
    assert torch.equal(traced(x), net(x))


LAYOUTS = {
    "one_table": ["embedding.kind=unified"],  # its output already is in layout order
    "two_tables": ["embedding.kind=unified", "embedding.num_tables=2"],  # keys alternate
    "per_feature": ["embedding.kind=hashing_trick"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_embed_puts_each_key_vector_at_its_layout_place(tmp_path: Path, layout: str) -> None:
    net, _, kjt = _model_and_batch(tmp_path, ModelConfig(), LAYOUTS[layout])
    pooled = net.sparse_arch(kjt)
    assert (pooled.keys() == net.layout_keys) == (layout != "two_tables")
    vectors = net.embed(kjt)
    assert vectors.shape == (4, net.num_vectors, net.dim)
    # a key holds its feature's chunks (a multiple of dim wide in per-feature tables)
    by_key = pooled.to_dict()
    expected = torch.cat([by_key[key] for key in net.layout_keys], dim=1)
    torch.testing.assert_close(vectors.flatten(1), expected, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["one_table", "two_tables"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_model_traces_with_the_tables_as_a_leaf(tmp_path: Path, kind: str, layout: str) -> None:
    """TorchRec's train pipeline traces the model's forward with torch.fx, its tracer, every
    child module a leaf (the sharded tables and the modules without tables), the tables'
    output symbolic: the forward must not branch on it."""
    net, dense, kjt = _model_and_batch(tmp_path, ModelConfig(kind=kind), LAYOUTS[layout])
    children = [name for name, _ in net.named_children()]
    graph = Tracer(leaf_modules=children).trace(net)
    traced = torch.fx.GraphModule(net, graph)
    torch.testing.assert_close(traced(dense, kjt), net(dense, kjt), rtol=0, atol=0)


def test_low_rank_cross_layers_hold_fewer_weights(tmp_path: Path) -> None:
    full, _, _ = _model_and_batch(tmp_path, ModelConfig(kind="dcn_v2", cross_layers=2))
    low, _, _ = _model_and_batch(tmp_path, ModelConfig(kind="dcn_v2", cross_layers=2, cross_rank=4))
    assert isinstance(full, DCNv2) and isinstance(low, DCNv2)
    width = full.width
    assert sum(p.numel() for p in full.cross.parameters()) == 2 * (width * width + width)
    assert sum(p.numel() for p in low.cross.parameters()) == 2 * (2 * width * 4 + width)


def _top(model: CTRModel, z: torch.Tensor) -> torch.Tensor:
    """``model``'s over_arch by hand: its linear layers, a ReLU between each."""
    layers = [m for m in model.over_arch if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(layers):
        z = z @ layer.weight.T + layer.bias
        z = torch.relu(z) if i < len(layers) - 1 else z
    return z[:, 0]


@pytest.mark.parametrize("rank", [None, 4])
def test_dcn_v2_is_the_papers_cross_network_then_the_deep_one(
    tmp_path: Path, rank: int | None
) -> None:
    """x_{l+1} = x0 * (W x_l + b) + x_l over x0 = [dense, embeddings], W = U V^T low-rank,
    then the deep network (Wang et al. 2021): shapes, counts and gradients alone would pass
    `x0 * project(x) + x0` (a review's finding)."""
    layout = build_layout(small_config(tmp_path).embedding, small_config(tmp_path).features, 0)
    config = ModelConfig(kind="dcn_v2", cross_rank=rank, cross_layers=3)
    model = create_model(layout, 3, config, "cpu").double()
    torch.manual_seed(0)
    dense = torch.rand(5, 3, dtype=torch.float64)
    vectors = torch.randn(5, layout.num_vectors, layout.dim, dtype=torch.float64)
    x0 = torch.cat([dense, vectors.flatten(1)], 1)
    x = x0
    for layer in model.cross:  # type: ignore[attr-defined]
        if rank is None:
            w, b = layer.project.weight, layer.project.bias
        else:
            v, u = layer.project
            w, b = u.weight @ v.weight, u.bias
        x = x0 * (x @ w.T + b) + x
    want = _top(model, x)
    assert torch.allclose(model.network(dense, vectors), want, rtol=1e-10, atol=1e-12)


def test_autoint_is_multi_head_self_attention_with_a_residual_and_relu(tmp_path: Path) -> None:
    """Each head softmax(q k^T / sqrt(width)) v over the feature tokens (dense features as
    their value times a learned vector), the heads concatenated, plus the residual
    projection, then ReLU; the flattened tokens into the output network (Song et al. 2019)."""
    layout = build_layout(small_config(tmp_path).embedding, small_config(tmp_path).features, 0)
    heads, width = 2, 16
    config = ModelConfig(
        kind="autoint", attention_heads=heads, attention_dim=width, attention_layers=2
    )
    model = create_model(layout, 3, config, "cpu").double()
    torch.manual_seed(0)
    dense = torch.rand(5, 3, dtype=torch.float64)
    vectors = torch.randn(5, layout.num_vectors, layout.dim, dtype=torch.float64)
    e = torch.cat([dense[:, :, None] * model.dense_tokens, vectors], 1)  # type: ignore[operator]
    per_head = width // heads
    for layer in model.attention:  # type: ignore[attr-defined]
        wq, wk, wv = layer.qkv.weight.chunk(3, 0)
        outs = []
        for h in range(heads):
            rows = slice(h * per_head, (h + 1) * per_head)
            q, k, v = e @ wq[rows].T, e @ wk[rows].T, e @ wv[rows].T
            outs.append(torch.softmax(q @ k.transpose(1, 2) / per_head**0.5, -1) @ v)
        e = torch.relu(torch.cat(outs, -1) + e @ layer.residual.weight.T)
    want = _top(model, e.flatten(1))
    assert torch.allclose(model.network(dense, vectors), want, rtol=1e-10, atol=1e-12)


def test_a_cross_rank_of_half_the_width_or_more_is_warned_of() -> None:
    """A low rank at half the cross network's width or more holds as many weights as a
    full layer (2 x width x rank) and runs two products: it was taken without a word."""
    from dist_train.config.load import load_config
    from dist_train.models.dcn import wide_rank_note

    def note(*sets: str) -> str | None:
        return wide_rank_note(load_config(None, ["model.kind=dcn_v2", *sets]))

    # the default job: 13 dense features and 39 vectors of 16, 637 wide
    assert note() is None and note("model.cross_rank=318") is None
    said = note("model.cross_rank=319")
    assert said is not None and "at least half the cross network's width (637)" in said
    assert note("model.kind=dlrm", "model.cross_rank=319") is None  # DLRM does not read it
    # at the width or more it was warned of alone, and diverged (a helper's audit: rank 1,000
    # on the tests' width of 52 reached a log loss of 101.7 in 4 steps)
    assert note("model.cross_rank=636") is not None
    with pytest.raises(ConfigError, match=r"cross_rank=637 is not below the cross network's"):
        note("model.cross_rank=637")
    # and before the run: validate said ok, submit uploaded it (a review)
    from dist_train.cli.main import main
    from dist_train.validate import validate_files

    wide = ["model.kind=dcn_v2", "model.cross_rank=637", "ray.num_workers=1"]
    (problem,) = validate_files([str(DEFAULT_CONFIG)], wide).problems
    assert "model.cross_rank=637 is not below" in problem
    sets = [a for w in wide for a in ("--set", w)]
    assert main(["submit", "--dry-run", "--no-working-dir", *sets]) == 2


def test_attention_width_must_split_over_the_heads() -> None:
    with pytest.raises(ValidationError, match=r"attention_dim .* divisible by attention_heads"):
        ModelConfig(kind="autoint", attention_dim=10, attention_heads=3)


def test_dot_interaction_is_the_dense_vector_then_every_pair_once() -> None:
    torch.manual_seed(0)
    dense, vectors = torch.randn(3, 4), torch.randn(3, 5, 4)
    out = DotInteraction()(dense, vectors)
    stacked = torch.cat([dense[:, None], vectors], dim=1)
    pairs = [(stacked[:, i] * stacked[:, j]).sum(-1) for i in range(6) for j in range(i + 1, 6)]
    torch.testing.assert_close(out, torch.cat([dense, torch.stack(pairs, dim=1)], dim=1))


def test_dot_interaction_gradient_is_autograds_of_the_plain_gram_matrix() -> None:
    # the interaction's own backward (one matmul with the symmetrized gradient) against
    # autograd through bmm and the upper-triangle gather, in double precision
    torch.manual_seed(0)
    dense = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    vectors = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 4 + 15, dtype=torch.float64)
    (DotInteraction()(dense, vectors) * weights).sum().backward()
    ours = dense.grad, vectors.grad
    stacked = torch.cat([dense[:, None], vectors], dim=1)
    rows, cols = torch.triu_indices(6, 6, offset=1)
    plain = torch.cat([dense, torch.bmm(stacked, stacked.transpose(1, 2))[:, rows, cols]], 1)
    torch.testing.assert_close(ours, torch.autograd.grad((plain * weights).sum(), (dense, vectors)))


@pytest.mark.parametrize("width", [16, 1024])
def test_the_planners_meta_model_counts_the_attention_a_cpu_rank_keeps(width: int) -> None:
    """The planner's model is on the meta device, where attention keeps its scores as the
    plain computation does: the default AutoInt was charged 2.6 times what the CPU's fused
    kernel keeps (129,844 bytes an example against 50,804), and planned at about twice the
    memory it trained in (docs/planner.md, "The dense network's activations")."""
    cfg = load_config(overrides=["model.kind=autoint", f"model.attention_dim={width}"])
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    num_dense = len(cfg.data.resolved_dense_columns())
    with torch.device("meta"):
        planned = create_model(layout, num_dense, cfg.model, embedding_device="meta")
    trained = create_model(layout, num_dense, cfg.model, embedding_device="meta")
    assert {p.device.type for n, p in trained.named_parameters() if "sparse" not in n} == {"cpu"}
    counted = planned.activation_bytes_per_sample(num_dense)
    assert counted == trained.activation_bytes_per_sample(num_dense)
    if width == 16:
        assert counted == 50_804
    # attention outside the count is torch's own, on meta too
    q = torch.zeros(2, 2, 5, 8, device="meta", requires_grad=True)
    attended = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert "Flash" not in type(attended.grad_fn).__name__


def test_the_planner_charges_the_networks_activations() -> None:
    """An AutoInt of 1,024-wide attention trained at 3.4 GiB a rank where the plan said
    100 MiB: the cost model charged the dense weights and a fixed overhead, not what the
    network keeps for its backward at the rank's batch (`bench planner --memory-only`)."""
    from dist_train.train.sharding import plan_for_config, planner_for_config
    from planners.cost_model import ACTIVATION_PEAK, dense_costs, dense_state_bytes

    wide = ["model.kind=autoint", "model.attention_dim=1024", "model.attention_layers=1"]

    def workload(overrides: list[str]):  # type: ignore[no-untyped-def]
        planner = planner_for_config(load_config(overrides=overrides), 2, 2)[0]
        return planner.workload, planner.topology

    narrow, topo = workload(["model.kind=autoint", "model.attention_layers=1"])
    big, _ = workload(wide)
    # a 64 times wider layer: its projections' bytes 64 times (the scores' stay)
    assert 10 < big.activation_bytes_per_sample / narrow.activation_bytes_per_sample < 64
    memory = float(dense_costs(big, topo).memory.max())
    activations = ACTIVATION_PEAK * 2048 * big.activation_bytes_per_sample
    hook_copy = 4 * big.dense_parameters  # DDP's hook averages a copy, on 2 ranks
    assert memory == pytest.approx(
        dense_state_bytes(big) + activations + topo.step_overhead_bytes + hook_copy
    )
    assert 3 * 2**30 < memory < 4 * 2**30  # measured: 3.3 GiB a rank
    # halving the batch halves them
    half, _ = workload([*wide, "train.batch_size=1024"])
    assert half.activation_bytes_per_sample == big.activation_bytes_per_sample
    # too large for the ranks: the error says what to shrink
    with pytest.raises(
        PlanningError,
        match=r"of which 3.\d+ GiB the network's activations "
        r"at 2,048 examples a rank.*smaller train.batch_size",
    ):
        plan_for_config(load_config(overrides=[*wide, "sharding.memory_per_rank=2GiB"]))
