"""The statistics pass: the mean and covariance of every channel group *as its consumers read it*.

With calibration data, :func:`simprune.prune` runs one streaming forward pass of the unpruned model
(eval mode, no gradient) with a pre-hook on every consumer (a Conv/Linear that reads the group's
channels). For each group, the hook takes the consumer's input at the group's channel positions --
after BatchNorm, activation, pooling, flatten: whatever really reaches the layer -- and accumulates
the sample count n, the sum and the sum of outer products of the channel vector z in float64 on the
model's device. Nothing else is kept: activations are never stored.

* Samples: every spatial position of a Conv input, every token of a Linear input, and every position
  of a channel's block when a flatten feeds a Linear (the block's positions are pooled as samples of
  that channel, in the same order for every channel).
* Several consumers: a group read by several consumers (a residual stream read by the next block and
  by a projection shortcut) accumulates each distinct tensor once per batch (the same tensor read
  twice -- a block's conv1 and its downsample -- is counted once; "the same" is the same address,
  shape, strides and version while the storage is still alive: memory freed during the forward is
  reused by the next tensor of that size, which is a new tensor), so its statistics describe all
  the inputs the merge has to serve. Consumers that read only part of the group's channels, or
  where Torch-Pruning's index mapping points past the layer's inputs, are not used; a group with
  no usable consumer gets no statistics (its merge then falls back to the descriptor merge, see
  :mod:`simprune.pruning.merge`).
* Precision and cost: each chunk of at most ``CHUNK_ROWS`` samples is centred on a fixed shift (the
  first batch's mean) while it is copied once, channels last, into a work buffer, multiplied by
  itself in the activations' dtype (float32 products; float64 for float64 models, or with
  ``product_dtype=torch.float64``) and summed into float64 accumulators, so the covariance does not
  cancel catastrophically when the mean is large. Against float64 products the float32 ones are
  within ~2e-5 sd_i sd_j (covariance) and ~4e-6 sd (mean) on ResNet-50 (tests/test_prune_stats.py
  holds 5e-5 / 1e-5). Only the Gram's column blocks on and above the diagonal are multiplied (about
  half of the rows x C^2 multiply-adds for C >= 1024), and a ones column in the work buffer gives
  the sums from the same product. This multiply is the pass's cost beyond the forward: 2.35 GMAC
  per 224x224 image on ResNet-50 (0.57 x its forward's MACs; 15 residual-stream tensors of 205M
  C^2 each), so the pass takes about 1.5 forwards (benchmarks/results/calibration_cpu.md).
* Memory: C^2 + 2C float64 numbers per group of C channels (C = 4096: 134 MB; C = 14336: 1.64 GB),
  plus, shared by the pass, one float32 (C + 1)^2 Gram of the widest group (C = 14336: 0.82 GB)
  and one chunk of samples (at most ``CHUNK_BYTES``). The groups are split into passes whose
  accumulators fit ``memory_budget`` (default :data:`DEFAULT_MEMORY_BUDGET`, 4 GiB): a model with 32
  groups of 14336 channels (52 GB of accumulators) takes 16 passes over the data; the data must
  then be iterable more than once (a Tensor, a list, a DataLoader). A single group whose
  accumulators exceed the budget is refused with a ValueError naming it, its width and the bytes it
  needs.

:func:`collect_stats` returns one :class:`GroupStats` per group (by root name). The data merge and the
``activation`` metric use nothing else.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .calibrate import _batches, check_data_type
from .groups import ChannelGroup, Member, _run_forward

DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of float64 accumulators per pass over the data
CHUNK_ROWS = 65536  # samples multiplied at once (and at most CHUNK_BYTES of them)
CHUNK_BYTES = 64 << 20


@dataclass
class GroupStats:
    """Statistics of one channel group's channels as its consumers read them (float64).

    n : samples accumulated
    mean : (C,) mean of each channel
    cov : (C, C) covariance (divided by n)
    consumers : the consumers whose inputs were used
    product_dtype : the dtype the outer products were computed in (float32 or float64)
    """

    root: str
    n: int
    mean: torch.Tensor
    cov: torch.Tensor
    consumers: list[str] = field(default_factory=list)
    product_dtype: torch.dtype = torch.float64

    @property
    def n_channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def rank_deficient(self) -> bool:
        """Fewer samples than channels: the covariance cannot have full rank."""
        return self.n <= self.n_channels


@dataclass
class _Reader:
    """How one consumer's input holds one group's channels."""

    group: int
    consumer: str
    dim: int  # the channel dimension of the consumer's input (1: conv, -1: Linear)
    pos: torch.Tensor  # (C, k) input positions of each channel (k > 1: a flatten block)
    key: bytes  # identifies the positions (two consumers reading the same tensor the same way)
    identity: bool = False  # the consumer reads exactly the group's channels, in order


class _Scratch:
    """Work buffers reused by every accumulator of one pass: the centred chunk of samples and its
    Gram (allocated once at the largest size, not per batch and group)."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        b = self._bufs.get((name, dtype, device))
        if b is None or b.numel() < numel:
            b = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[(name, dtype, device)] = b
        return b[:numel]


def _gram_edges(width: int) -> list[int]:
    """Column blocks of the Gram: blocks of ~128 columns or more (up to 16 of them), of which only
    those on and above the diagonal are multiplied -- (nb + 1) / (2 nb) of the multiply-adds: 3/4 at
    C = 256, 17/32 at C = 2048 (narrower blocks multiply less efficiently than they save)."""
    nb = 1 if width < 256 else min(16, width // 128)
    return [width * i // nb for i in range(nb + 1)]


def _row_chunks(z: torch.Tensor, step: int) -> Iterator[torch.Tensor]:
    """Views of z (..., C) that cover its samples in order, each of at most ``step`` samples
    (split along the leading dimensions, no copy)."""
    if z.dim() == 1:
        z = z.unsqueeze(0)
    inner = math.prod(z.shape[1:-1])
    if inner <= step:
        per = max(1, step // max(inner, 1))
        for a in range(0, z.shape[0], per):
            yield z[a : a + per]
    else:
        for i in range(z.shape[0]):
            yield from _row_chunks(z[i], step)


class _Acc:
    """float64 running sums of one group, around a fixed shift (the first batch's mean).

    Each chunk of at most ``CHUNK_ROWS`` samples is centred on the shift while being copied once
    into a (rows, C + 1) work buffer whose last column is 1, multiplied by itself in the product
    dtype (float32 unless the samples or the caller ask for float64) -- the Gram of the centred
    samples and, in its last column, their sum -- and added into the float64 sums. Only the Gram's
    blocks on and above the diagonal are computed and summed; :meth:`result` mirrors them.
    """

    def __init__(
        self,
        c: int,
        device: torch.device,
        product_dtype: torch.dtype | None = None,
        scratch: _Scratch | None = None,
    ) -> None:
        self.c = c
        self.n = 0
        self.product_dtype = product_dtype  # None: float64 for float64 samples, else float32
        self.dtype = torch.float64  # the dtype the products were computed in
        self.shift: torch.Tensor | None = None
        self.s = torch.zeros(c, dtype=torch.float64, device=device)
        self.ss = torch.zeros(c, c, dtype=torch.float64, device=device)
        self.edges = _gram_edges(c + 1)
        self.scratch = scratch if scratch is not None else _Scratch()

    def add(self, z: torch.Tensor) -> None:
        """z: (..., C) samples, any strides (a view of a consumer's input); left unchanged."""
        c = self.c
        if z.numel() == 0:
            return
        if z.dim() == 1:
            z = z.unsqueeze(0)
        cdt = self.product_dtype
        if cdt is None:
            cdt = torch.float64 if z.dtype == torch.float64 else torch.float32
        if cdt != torch.float64:
            self.dtype = cdt
        if self.shift is None:
            # Any fixed value near the mean will do: the first batch's mean in the product dtype
            # (a float64 mean would first copy the whole batch to float64).
            self.shift = z.mean(dim=tuple(range(z.dim() - 1)), dtype=cdt).to(torch.float64)
        shift = self.shift.to(cdt)
        esize = torch.empty((), dtype=cdt).element_size()
        step = max(1, min(CHUNK_ROWS, CHUNK_BYTES // (esize * (c + 1))))
        e = self.edges
        for zc in _row_chunks(z, step):
            rows = zc.numel() // c
            buf = self.scratch.get("z", rows * (c + 1), cdt, z.device).view(rows, c + 1)
            torch.sub(zc, shift, out=buf[:, :c].view(zc.shape))  # the one copy: centred
            buf[:, c].fill_(1.0)
            g = self.scratch.get("gram", (c + 1) ** 2, cdt, z.device).view(c + 1, c + 1)
            for i in range(len(e) - 1):
                # Row block i of the upper part: columns e[i]: (its diagonal block and those right).
                torch.mm(buf[:, e[i] : e[i + 1]].T, buf[:, e[i] :], out=g[e[i] : e[i + 1], e[i] :])
                r1 = min(e[i + 1], c)
                if r1 > e[i]:
                    self.ss[e[i] : r1, e[i] :] += g[e[i] : r1, e[i] : c]
            self.s += g[:c, c]
            self.n += rows

    def result(self, root: str, consumers: list[str]) -> GroupStats:
        """The statistics (float64; turns the accumulator's own sums into the covariance)."""
        assert self.shift is not None
        m = self.s / self.n
        # In place (one C^2 temporary): the upper triangle (the blocks below the diagonal were
        # never summed) becomes the covariance, then is mirrored: exactly symmetric.
        cov = self.ss.div_(self.n).addr_(m, m, alpha=-1.0).triu_()
        cov += cov.triu(1).mT
        return GroupStats(root, self.n, self.shift + m, cov, consumers, self.dtype)


def _channel_dim(mod: nn.Module) -> int:
    return 1 if isinstance(mod, nn.modules.conv._ConvNd) else -1


def _n_inputs(mod: nn.Module) -> int:
    if isinstance(mod, nn.modules.conv._ConvNd):
        return int(mod.in_channels)
    return int(mod.in_features)  # type: ignore[arg-type]


def readers_of(group: ChannelGroup, gi: int) -> list[tuple[Member, _Reader]]:
    """The consumers of ``group`` whose inputs hold all of its channels, each channel in a block of
    the same size k (k > 1 behind a flatten), within the layer's inputs."""
    out = []
    n = group.n_channels
    for m in group.consumers():
        if not isinstance(m.module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        idx = m.layer_index_map()
        if sorted(idx) != list(range(n)):
            continue
        ks = {len(v) for v in idx.values()}
        if len(ks) != 1:
            continue
        pos = np.asarray([idx[c] for c in range(n)], dtype=np.int64)
        n_in = _n_inputs(m.module)
        if pos.max() >= n_in:
            continue
        ident = pos.shape[1] == 1 and n_in == n and bool((pos[:, 0] == np.arange(n)).all())
        r = _Reader(gi, m.name, _channel_dim(m.module), torch.from_numpy(pos), pos.tobytes(), ident)
        out.append((m, r))
    return out


def _samples(x: torch.Tensor, r: _Reader) -> torch.Tensor:
    """(..., C) samples of the group's channels in a consumer input ``x``, channels last: a view of
    ``x`` when the consumer reads exactly the group's channels (no copy: the accumulator centres
    them while copying once), else a gathered copy."""
    xm = x.movedim(r.dim, -1)
    c, k = r.pos.shape
    if r.identity:
        return xm
    pos = r.pos.to(x.device)
    if k == 1:
        return xm.index_select(-1, pos[:, 0])
    z = xm.index_select(-1, pos.reshape(-1)).reshape(*xm.shape[:-1], c, k)
    return z.transpose(-1, -2)


def accumulator_bytes(n_channels: int) -> int:
    """float64 bytes of one group's accumulators (C^2 + 2C numbers)."""
    return 8 * (n_channels * n_channels + 2 * n_channels)


def _fmt_bytes(b: int) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.2f} MiB"


def _passes(groups: Sequence[ChannelGroup], todo: list[int], budget: int) -> list[list[int]]:
    out: list[list[int]] = [[]]
    used = 0
    for gi in todo:
        b = accumulator_bytes(groups[gi].n_channels)
        if b > budget:
            g = groups[gi]
            raise ValueError(
                f"group {g.root_name!r} has {g.n_channels} channels: its statistics need "
                f"{_fmt_bytes(b)} of float64 accumulators (C^2), more than memory_budget="
                f"{_fmt_bytes(budget)}; raise the budget or leave the layer out (ignored_layers)"
            )
        if out[-1] and used + b > budget:
            out.append([])
            used = 0
        out[-1].append(gi)
        used += b
    return out


def _model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return (p.device, p.dtype) if p is not None else (None, None)


def _reiterable(data: Any) -> bool:
    if isinstance(data, torch.Tensor):
        return True
    return isinstance(data, Iterable) and iter(data) is not data


def check_batch(x: torch.Tensor, k: int, example: Any, dtype: torch.dtype | None) -> None:
    """ValueError/TypeError for a calibration batch that cannot be an input like ``example``."""
    ex = example[0] if isinstance(example, (tuple, list)) and example else example
    if isinstance(ex, torch.Tensor):
        if x.dim() != ex.dim():
            raise ValueError(
                f"calibration batch {k} has shape {tuple(x.shape)}, the example inputs "
                f"{tuple(ex.shape)}: a batch must have the example's number of dimensions "
                "(a Tensor of inputs is split along its first dimension)"
            )
        if ex.is_floating_point() != x.is_floating_point():
            raise TypeError(
                f"calibration batch {k} has dtype {x.dtype}, the example inputs {ex.dtype}: "
                "convert the data first (e.g. images to floating point, normalised as in training)"
            )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"calibration batch {k} contains {int((~torch.isfinite(x)).sum())} NaN or Inf value(s)"
        )


def _prepared_batches(
    data: Any,
    batch_size: int,
    max_batches: int | None,
    example_inputs: Any,
    device: torch.device | None,
    dtype: torch.dtype | None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(k, batch) for the first ``max_batches`` batches of ``data`` (:func:`_batches`), each checked
    against the example inputs (:func:`check_batch`), on the model's device and, when floating
    point, in the model's dtype."""
    for k, x in enumerate(_batches(data, batch_size)):
        if max_batches is not None and k >= max_batches:
            return
        check_batch(x, k, example_inputs, dtype)
        if device is not None:
            x = x.to(device)
        if dtype is not None and x.is_floating_point() and x.dtype != dtype:
            x = x.to(dtype)
        yield k, x


def _storage_ref(x: torch.Tensor) -> Callable[[], object]:
    """A weak reference to ``x``'s storage (alive exactly while the storage is), or, where a
    tensor has no storage to refer to, one that is always dead (the read is then never skipped)."""
    try:
        return weakref.ref(x.untyped_storage())
    except (TypeError, RuntimeError, NotImplementedError):
        return lambda: None


@torch.no_grad()
def collect_stats(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    data: Any,
    example_inputs: Any = None,
    *,
    batch_size: int = 256,
    max_batches: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    product_dtype: torch.dtype | None = None,
) -> dict[str, GroupStats]:
    """Mean and covariance of every group's channels at its consumers' inputs (module docstring).

    Parameters
    ----------
    model : the unpruned model the groups were traced on (run in eval mode, modes restored).
    groups : its channel groups (:func:`simprune.pruning.groups.collect_groups`).
    data : Tensor of inputs (split into ``batch_size`` batches) or an iterable of batches (Tensors,
        or tuples/lists starting with the input, as a DataLoader yields). Batches are moved to the
        model's device; floating-point batches are cast to the model's dtype.
    example_inputs : the inputs the model was traced with, to check the batches' dimensions and
        kind (floating point or integer) against.
    batch_size, max_batches : as in :func:`simprune.recalibrate_bn`.
    memory_budget : bytes of float64 accumulators per pass over the data.
    product_dtype : the dtype each chunk's products are computed in before the float64 sums: None
        (default) for float32, or float64 when the activations are float64; ``torch.float64`` asks
        for float64 products with a float32 model (about 2x slower on CPUs; the float32 products
        are within ~2e-5 sd_i sd_j of them on ResNet-50, see the module docstring).

    Returns
    -------
    dict root name -> :class:`GroupStats` for every group with a usable consumer.

    Raises
    ------
    ValueError
        A batch that does not fit the model (naming its shape and the error), NaN/Inf in a batch,
        non-finite activations at a consumer's input (naming the group and the consumer), a group
        wider than the memory budget, several passes needed over a one-shot iterator.
    TypeError
        Data of an unsupported type, or integer data for a floating-point model input.
    """
    check_data_type(data)
    if product_dtype not in (None, torch.float32, torch.float64):
        raise ValueError(
            f"product_dtype must be None, torch.float32 or torch.float64, got {product_dtype!r}"
        )
    if not (isinstance(memory_budget, int) and memory_budget > 0):
        raise ValueError(f"memory_budget must be a positive int (bytes), got {memory_budget!r}")
    device, dtype = _model_device_dtype(model)
    readers: dict[int, list[tuple[Member, _Reader]]] = {}
    for gi, g in enumerate(groups):
        rs = readers_of(g, gi)
        if rs:
            readers[gi] = rs
    todo = sorted(readers)
    if not todo:
        return {}
    passes = _passes(groups, todo, memory_budget)
    if len(passes) > 1 and not _reiterable(data):
        raise ValueError(
            f"the statistics need {len(passes)} passes over the calibration data (memory_budget="
            f"{_fmt_bytes(memory_budget)}) but it is a one-shot iterator: pass a Tensor, a "
            "list of batches or a DataLoader, or raise memory_budget"
        )
    out: dict[str, GroupStats] = {}
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        for part in passes:
            out.update(
                _one_pass(
                    model,
                    groups,
                    readers,
                    part,
                    data,
                    example_inputs,
                    device,
                    dtype,
                    batch_size,
                    max_batches,
                    product_dtype,
                )  # fmt: skip
            )
    finally:
        for mod, t in zip(model.modules(), was_training, strict=True):
            mod.training = t
    return out


def _one_pass(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    readers: dict[int, list[tuple[Member, _Reader]]],
    part: list[int],
    data: Any,
    example_inputs: Any,
    device: torch.device | None,
    dtype: torch.dtype | None,
    batch_size: int,
    max_batches: int | None,
    product_dtype: torch.dtype | None,
) -> dict[str, GroupStats]:
    scratch = _Scratch()
    dev = device or torch.device("cpu")
    accs = {gi: _Acc(groups[gi].n_channels, dev, product_dtype, scratch) for gi in part}
    seen: dict[int, dict[tuple[Any, ...], Any]] = {gi: {} for gi in part}
    used: dict[int, list[str]] = {gi: [] for gi in part}
    by_module: dict[int, tuple[nn.Module, list[_Reader]]] = {}
    for gi in part:
        for m, r in readers[gi]:
            by_module.setdefault(id(m.module), (m.module, []))[1].append(r)

    def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        for r in by_module[id(mod)][1]:
            # The same tensor read the same way by another consumer (a block's conv1 and its
            # downsample) is counted once. An address names the same data only while its storage
            # lives: memory freed during the forward is reused by the next tensor of that size (a
            # residual stream's next block output), so the key's storage must still be alive.
            key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x._version, r.dim, r.key)
            ref = seen[r.group].get(key)
            if ref is not None and ref() is not None:
                continue
            seen[r.group][key] = _storage_ref(x)
            if r.consumer not in used[r.group]:
                used[r.group].append(r.consumer)
            accs[r.group].add(_samples(x.detach(), r))

    handles = [mod.register_forward_pre_hook(hook) for mod, _ in by_module.values()]
    n_batches = 0
    try:
        for k, x in _prepared_batches(data, batch_size, max_batches, example_inputs, device, dtype):
            for s in seen.values():
                s.clear()
            try:
                _run_forward(model, x)
            except Exception as e:  # noqa: BLE001 - re-raised naming the batch
                raise ValueError(
                    f"calibration batch {k} of shape {tuple(x.shape)} does not fit the model: "
                    f"{type(e).__name__}: {str(e)[:300]}"
                ) from e
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
    if n_batches == 0:
        raise ValueError("calibration data yielded no batch")
    out = {}
    for gi in part:
        acc, g = accs[gi], groups[gi]
        if acc.n == 0:
            continue  # its consumers did not run on these inputs
        st = acc.result(g.root_name, used[gi])
        if not (bool(torch.isfinite(st.cov).all()) and bool(torch.isfinite(st.mean).all())):
            raise ValueError(
                f"group {g.root_name!r}: the calibration data gives non-finite activations (NaN "
                f"or Inf) at the input of {', '.join(repr(c) for c in used[gi])}; the model "
                "overflows or holds NaN on this data"
            )
        out[g.root_name] = st
    return out


def attach_stats(groups: Sequence[ChannelGroup], stats: dict[str, GroupStats]) -> None:
    """Set every group's ``stats`` (None where ``stats`` has no entry for its root)."""
    for g in groups:
        g.stats = stats.get(g.root_name)


def warn_rank_deficient(stats: GroupStats, kept: int) -> bool:
    """Warn (once per group) when a group has no more samples than kept channels."""
    if stats.n > kept:
        return False
    warnings.warn(
        f"group {stats.root!r}: {stats.n} calibration sample(s) for {kept} kept channels: the "
        "reconstruction is rank-deficient; using the fallback ridge (more calibration data "
        "gives a better merge)",
        stacklevel=3,
    )
    return True


def covariance_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """A matrix V (C, C) with V V^T = cov (the PSD part): rows are descriptors whose squared
    distances are Var(z_i - z_j) = S_ii + S_jj - 2 S_ij (float64)."""
    s = cov.to(torch.float64)
    evals, evecs = torch.linalg.eigh((s + s.T) / 2)
    return evecs * evals.clamp_min(0.0).sqrt()


def execution_order(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """Module name -> the index of its first call in one forward of ``example_inputs``."""
    order: dict[str, int] = {}
    names = {id(m): n for n, m in model.named_modules()}

    def pre(mod: nn.Module, _a: Any) -> None:
        order.setdefault(names[id(mod)], len(order))

    hs = [m.register_forward_pre_hook(pre) for m in model.modules()]
    was = [m.training for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            _run_forward(model, example_inputs)
    finally:
        for h in hs:
            h.remove()
        for mod, t in zip(model.modules(), was, strict=True):
            mod.training = t
    return order


@torch.no_grad()
def collect_paired_stats(
    original: nn.Module,
    working: nn.Module,
    group: ChannelGroup,
    data: Any,
    example_inputs: Any = None,
    *,
    batch_size: int = 256,
    max_batches: int | None = None,
) -> GroupStats | None:
    """Joint statistics of one group's channels in the ``working`` (partly pruned) model and in the
    ``original`` one, at the same consumers' inputs, on the same batches: mean (2C,) and covariance
    (2C, 2C) of [z_working, z_original] (the layer-by-layer data merge regresses the original
    channels on the working model's kept ones). One batch of this group's original samples is held
    while the working model runs on the same batch. None when no consumer holds all channels."""
    rs = readers_of(group, 0)
    if not rs:
        return None
    device, dtype = _model_device_dtype(original)
    c = group.n_channels
    acc = _Acc(2 * c, device or torch.device("cpu"))  # products in the activations' dtype
    names = [m.name for m, _ in rs]
    held: list[torch.Tensor] = []
    paired: list[torch.Tensor] = []

    def make(model: nn.Module, out: list[torch.Tensor]) -> list[Any]:
        hs = []
        for (_m, r), name in zip(rs, names, strict=True):
            mod = model.get_submodule(name)

            def hook(_m: nn.Module, args: tuple[Any, ...], r: _Reader = r) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    # A copy: held while the other model runs (it may reuse or modify the input).
                    z = _samples(args[0].detach(), r)
                    out.append(z.clone(memory_format=torch.contiguous_format).view(-1, c))

            hs.append(mod.register_forward_pre_hook(hook))
        return hs

    handles = make(original, held) + make(working, paired)
    was = [(m, m.training) for mod in (original, working) for m in mod.modules()]
    original.eval()
    working.eval()
    n_batches = 0
    try:
        for _k, x in _prepared_batches(
            data, batch_size, max_batches, example_inputs, device, dtype
        ):
            held.clear()
            paired.clear()
            _run_forward(original, x)
            _run_forward(working, x)
            for zo, zw in zip(held, paired, strict=True):
                acc.add(torch.cat([zw, zo.to(zw.dtype)], 1))
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        for m, t in was:
            m.training = t
    if acc.n == 0:
        return None
    st = acc.result(group.root_name, names)
    if not (bool(torch.isfinite(st.cov).all()) and bool(torch.isfinite(st.mean).all())):
        raise ValueError(
            f"group {group.root_name!r}: the calibration data gives non-finite activations (NaN "
            f"or Inf) at the input of {', '.join(repr(n) for n in names)}"
        )
    return st
