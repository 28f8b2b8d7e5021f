"""MACs and parameters of a whole model as a function of the channels each group loses.

"MACs" in simprune are Torch-Pruning's ``count_ops_and_params`` MACs: the same modules, the same
conventions (per sample of the counter's batch: the length of the first positional input), so
``macs_reduction`` is a fraction of what that counter reports for the whole model. One forward pass
(eval mode, no grad, as the counter runs) records every module the counter counts: a module whose
*exact* type is in Torch-Pruning's ``MODULES_MAPPING`` (a subclass such as timm's ``BatchNormAct2d``
or torchvision's ``LayerNorm2d`` counts nothing, and neither does an op that runs outside a module),
not nested inside another counted module (an ``nn.MultiheadAttention`` or a timm ``Attention``
counts its projections and attention products as a whole). Every counted call, at every call of a
module used several times, is one of:

* a Conv/Linear/norm layer, a closed form of its widths (Torch-Pruning's formulas):
  conv ``prod(kernel) * in * out / groups * positions`` (+ ``out * positions`` with a bias); linear
  ``tokens * in * out`` (+ ``out`` per call with a bias, not per sample: the counter's convention);
  norms ``numel(input) * (2 if affine else 1)``;
* ``nn.MultiheadAttention``: a closed form of its embedding width E (projections ``~4 L E^2``,
  products ``2 L^2 E``, softmax ``H L^2``);
* timm ``Attention`` / ``WindowAttention``: the counter's formula, a closed form of its ``qkv``
  layer's input and output widths;
* an activation, pooling or upsampling: cost proportional to its tensor's size, hence to the width
  of the channels it carries. Which widths those are is traced in the same pass: a
  ``TorchFunctionMode`` follows every tensor from the output of the Conv/Linear/norm/attention layer
  that made it (views, permutes, element-wise ops and pooling keep the proportion; a concatenation
  adds its parts), so e.g. a ReLU after a BatchNorm shrinks with that BatchNorm's channels;
* anything else the counter counts (RNNs, ops on the raw input): a fixed cost.

Each closed form is checked against Torch-Pruning's own hook on the unpruned model, and any
difference is kept as a fixed correction, so ``macs0`` equals the counter's total exactly. Widths are
linear in the channels removed per group (a consumer reached through a flatten loses ``stride``
inputs per channel), so a candidate cut of the bisection costs a few array operations. Parameters are
all the model's parameters: the layers' and attention modules' as closed forms, unwrapped parameters
of a group (class tokens, position embeddings, layer scales) shrink with it, the rest is fixed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning.utils import op_counter as _oc

from .groups import NORM_TYPES, ChannelGroup, _run_forward

# Torch-Pruning's counter hooks whose count is proportional to the size of the module's tensor.
_SCALED_HOOKS = (
    _oc.relu_flops_counter_hook,
    _oc.pool_flops_counter_hook,
    _oc.upsample_flops_counter_hook,
    _oc.empty_flops_counter_hook,
)
_LAYER_HOOKS = (
    _oc.conv_flops_counter_hook,
    _oc.linear_flops_counter_hook,
    _oc.bn_flops_counter_hook,
    _oc.ln_flops_counter_hook,
)
_CAT_FNS = {torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack}


def _tp_hook(m: nn.Module) -> Callable[..., None] | None:
    """Torch-Pruning's counter hook for ``m`` (exact type match, as the counter does), or None."""
    hook = _oc.CUSTOM_MODULES_MAPPING.get(type(m))
    return hook if hook is not None else _oc.MODULES_MAPPING.get(type(m))


def _counted_modules(model: nn.Module) -> dict[nn.Module, Callable[..., None]]:
    """The modules whose counts Torch-Pruning's counter adds up (it stops at a counted module)."""
    out: dict[nn.Module, Callable[..., None]] = {}

    def visit(m: nn.Module) -> None:
        hook = _tp_hook(m)
        if hook is not None:
            out.setdefault(m, hook)
            return
        for c in m.children():
            visit(c)

    visit(model)
    return out


def _tp_count(hook: Callable[..., None], mod: nn.Module, inp: Any, out: Any) -> float | None:
    """What Torch-Pruning's counter adds for this call (None when its hook fails on it)."""
    missing = object()
    saved = mod.__dict__.get("__flops__", missing)
    mod.__dict__["__flops__"] = 0
    try:
        hook(mod, inp, out)
        return float(mod.__dict__["__flops__"])
    except Exception:  # noqa: BLE001 - the counter itself would fail; our closed form stands
        return None
    finally:
        if saved is missing:
            mod.__dict__.pop("__flops__", None)
        else:
            mod.__dict__["__flops__"] = saved


@dataclass
class LayerShape:
    """A Conv/Linear/norm layer that ran in forward (all its calls together)."""

    name: str
    kind: str  # "conv" | "dwconv" | "linear" | "norm"
    in0: int
    out0: int
    groups: int = 1
    kernel: int = 1
    spatial: float = 0.0  # conv: output positions per sample; linear: tokens per sample (all calls)
    bias: bool = False
    batch: int = 1
    calls: int = 0
    counted: bool = True  # False: Torch-Pruning's counter does not count it (subclass, nested)
    norm_macs0: float = 0.0
    norm_params0: int = 0


@dataclass
class _Attention:
    """An ``nn.MultiheadAttention`` (kind "mha") or a timm attention module ("tattn")."""

    name: str
    kind: str
    calls: list[tuple[float, ...]] = field(default_factory=list)
    heads: int = 1
    bias: bool = False
    same_dim: bool = True  # mha: k and v have the embedding width
    kdim: int = 0
    vdim: int = 0
    e0: int = 0  # mha: embedding width
    qkv: int = -1  # tattn: index of its qkv layer
    params_extra: float = 0.0  # mha: parameters beyond the closed form (bias_k/v, ...)


@dataclass
class _ScaledOp:
    """A counted call whose count is proportional to its tensor's size."""

    name: str
    macs0: float
    fixed: float  # the part of the tensor not traced to any layer (per sample MACs)
    coef: dict[int, float]  # width unit -> MACs per channel of that unit


def _layer_kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.modules.conv._ConvNd):
        if m.groups > 1 and m.groups == m.in_channels == m.out_channels:
            return "dwconv"
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, NORM_TYPES):
        return "norm"
    return None


def _norm_channels(m: nn.Module) -> int:
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[-1])
    if isinstance(m, nn.GroupNorm):
        return int(m.num_channels)
    return int(m.num_features)  # type: ignore[arg-type]


def _widths(m: nn.Module, kind: str) -> tuple[int, int]:
    if kind in ("conv", "dwconv"):
        return int(m.in_channels), int(m.out_channels)  # type: ignore[arg-type]
    if kind == "linear":
        return int(m.in_features), int(m.out_features)  # type: ignore[arg-type]
    c = _norm_channels(m)
    return c, c


def _layer_cost(s: LayerShape, cin: float, cout: float) -> tuple[float, float]:
    """(MACs per sample, parameters) of one layer at widths (cin, cout)."""
    macs = 0.0
    if s.kind == "conv":
        macs = s.kernel * cin * cout / s.groups * s.spatial
        params = cout * cin / s.groups * s.kernel
    elif s.kind == "dwconv":
        macs = s.kernel * cout * s.spatial
        params = cout * s.kernel
    elif s.kind == "linear":
        macs = s.spatial * cin * cout + (s.calls * cout / s.batch if s.bias else 0.0)
        params = cin * cout
    else:
        frac = cout / s.out0 if s.out0 else 0.0
        return (s.norm_macs0 * frac if s.counted else 0.0), s.norm_params0 * frac
    if s.bias:
        params += cout
        if s.kind != "linear":
            macs += cout * s.spatial
    return (macs if s.counted else 0.0), params


def _mha_macs(a: _Attention, e: float, batch: int) -> float:
    """Torch-Pruning's ``nn.MultiheadAttention`` count at embedding width ``e`` (per sample)."""
    total = 0.0
    for qlen, klen, vlen, nb in a.calls:
        kd = e if a.same_dim else a.kdim
        vd = e if a.same_dim else a.vdim
        f = qlen * e + qlen * e * e + klen * kd * kd + vlen * vd * vd
        if a.bias:
            f += (qlen + klen + vlen) * e
        # heads * (QK^T + softmax + AV), head dims e / heads and vd / heads
        f += qlen * klen * e + a.heads * qlen * klen + qlen * klen * vd
        f += qlen * vd * (vd + 1)
        total += f * nb
    return total / batch


def _tattn_macs(a: _Attention, cin: float, cout: float, batch: int) -> float:
    """Torch-Pruning's timm attention count (``qkv`` widths cin -> cout = 3 q) per sample."""
    q = cout / 3
    total = 0.0
    for seq, nb in a.calls:
        f = seq * q + 3 * seq * cin * q + (3 * seq * q if a.bias else 0.0)
        f += 2 * seq * seq * q + a.heads * seq * seq + seq * q * (q + 1)
        total += f * nb
    return total / batch


def _mha_params(a: _Attention, e: float) -> float:
    kd = e if a.same_dim else a.kdim
    vd = e if a.same_dim else a.vdim
    p = e * e + e * kd + e * vd + e * e  # q, k, v and out projections
    if a.bias:
        p += 3 * e + e
    return p + a.params_extra


class _WidthTracer(TorchFunctionMode):
    """Follows tensors from the layers that made them: tensor -> {width unit: elements}."""

    def __init__(self) -> None:
        super().__init__()
        self.expr: dict[int, tuple[weakref.ref[torch.Tensor], dict[int, float]]] = {}

    def get(self, t: Any) -> dict[int, float] | None:
        if not isinstance(t, torch.Tensor):
            return None
        hit = self.expr.get(id(t))
        if hit is None or hit[0]() is not t:
            return None
        return hit[1]

    def set(self, t: torch.Tensor, e: dict[int, float]) -> None:
        self.expr[id(t)] = (weakref.ref(t), e)

    def source(self, t: Any, unit: int) -> None:
        if isinstance(t, torch.Tensor):
            self.set(t, {unit: float(t.numel())})

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        try:
            self._propagate(func, args, kwargs or {}, out)
        except Exception:  # noqa: BLE001, S110 - tracing is best effort; the forward must not fail
            pass
        return out

    def _propagate(self, func: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,))]
        outs = [o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point()]
        if not outs:
            return
        ins: list[torch.Tensor] = []
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, torch.Tensor):
                ins.append(a)
            elif isinstance(a, (tuple, list)):
                ins.extend(t for t in a if isinstance(t, torch.Tensor))
        traced = [(t, e) for t in ins if (e := self.get(t)) is not None]
        if not traced:
            return
        if func in _CAT_FNS and len(outs) == 1:
            total: dict[int, float] = {}
            for _, e in traced:
                for k, v in e.items():
                    total[k] = total.get(k, 0.0) + v
            self.set(outs[0], total)
            return
        # The largest traced input (the first on ties) carries the channels: element-wise ops
        # broadcast a smaller operand (an SE scale, a bias) onto it.
        src, e = max(traced, key=lambda te: te[0].numel())
        n_in = src.numel()
        if not n_in:
            return
        for o in outs:
            f = o.numel() / n_in
            self.set(o, {k: v * f for k, v in e.items()})


class CostModel:
    """Torch-Pruning's MACs/params of a model as a function of how many channels each group loses."""

    def __init__(self, model: nn.Module, example_inputs: Any):
        self.layers: list[LayerShape] = []
        self.ran: list[nn.Module] = []  # every Conv/Linear/norm layer that ran in forward
        self.attention: list[_Attention] = []
        self.scaled: list[_ScaledOp] = []
        self.fixed_macs = 0.0  # counted MACs that no width changes (per sample)
        self.correction = 0.0  # counter's count minus our closed forms on the unpruned model
        self._index: dict[str, int] = {}
        self._att_index: dict[str, int] = {}
        names = {m: n for n, m in model.named_modules()}
        counted = _counted_modules(model)
        tracer = _WidthTracer()
        batch = [1]
        tp_layer: dict[int, float] = {}  # layer index -> counter's count (raw, all calls)
        tp_att: dict[int, float] = {}

        def root_hook(mod: nn.Module, inp: Any, out: Any) -> None:
            # The counter's batch: len() of the first positional input, 1 without one.
            if isinstance(inp, tuple) and inp and hasattr(inp[0], "__len__"):
                batch[0] = len(inp[0])

        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            name = names[mod]
            x = inp[0] if isinstance(inp, tuple) and inp else None
            o = out[0] if isinstance(out, (tuple, list)) and out else out
            kind = _layer_kind(mod)
            tp_fn = counted.get(mod)
            tp = _tp_count(tp_fn, mod, inp, out) if tp_fn is not None else None
            if kind is not None and isinstance(x, torch.Tensor) and isinstance(o, torch.Tensor):
                k = self._record_layer(mod, name, kind, x, o, tp_fn is not None)
                tracer.source(o, k)
                if tp is not None:
                    tp_layer[k] = tp_layer.get(k, 0.0) + tp
                return
            if isinstance(mod, nn.MultiheadAttention) and tp_fn is not None:
                j = self._record_mha(mod, name, inp)
                if j is not None:
                    tracer.source(o, -1 - j)  # attention width units are negative until indexed
                    if tp is not None:
                        tp_att[j] = tp_att.get(j, 0.0) + tp
                    return
            if tp_fn is _oc.timm_multihead_attention_counter_hook and isinstance(x, torch.Tensor):
                j = self._record_tattn(mod, name, x)
                if j is not None:
                    if tp is not None:
                        tp_att[j] = tp_att.get(j, 0.0) + tp
                    return
            if tp_fn is None or tp is None:
                return
            e = tracer.get(o) if tp_fn in _SCALED_HOOKS else None
            self.scaled.append(_ScaledOp(name, tp, tp, {}))
            if e and isinstance(o, torch.Tensor) and o.numel():
                self.scaled[-1].coef = {k: tp * v / o.numel() for k, v in e.items()}

        training = {m: m.training for m in model.modules()}
        handles = [model.register_forward_hook(root_hook)]
        handles += [
            m.register_forward_hook(hook)
            for m in model.modules()
            if m in counted or _layer_kind(m) is not None
        ]
        try:
            model.eval()
            with torch.no_grad(), tracer:
                _run_forward(model, example_inputs)
        finally:
            for h in handles:
                h.remove()
            for m, t in training.items():
                m.training = t
        self.batch = batch[0]
        self._finish(model, tp_layer, tp_att)

    # -- recording ----------------------------------------------------------------------------

    def _record_layer(
        self, mod: nn.Module, name: str, kind: str, x: torch.Tensor, o: torch.Tensor, counted: bool
    ) -> int:
        k = self._index.get(name)
        if k is None:
            cin, cout = _widths(mod, kind)
            s = LayerShape(name, kind, cin, cout, counted=counted)
            s.bias = getattr(mod, "bias", None) is not None
            if kind in ("conv", "dwconv"):
                s.groups = int(mod.groups)  # type: ignore[arg-type]
                s.kernel = int(np.prod(mod.kernel_size))  # type: ignore[arg-type]
            elif kind == "norm":
                s.norm_params0 = sum(p.numel() for p in mod.parameters(recurse=False))
            k = self._index[name] = len(self.layers)
            self.layers.append(s)
            self.ran.append(mod)
        s = self.layers[k]
        s.calls += 1
        if kind in ("conv", "dwconv"):
            s.spatial += float(np.prod(o.shape[2:])) * o.shape[0]
        elif kind == "linear":
            s.spatial += x.numel() / max(s.in0, 1)
        else:
            affine = bool(
                getattr(mod, "affine", False) or getattr(mod, "elementwise_affine", False)
            )
            s.norm_macs0 += x.numel() * (2 if affine else 1)
        return k

    def _attention_entry(self, name: str, kind: str) -> int:
        j = self._att_index.get(name)
        if j is None:
            j = self._att_index[name] = len(self.attention)
            self.attention.append(_Attention(name, kind))
        return j

    def _record_mha(self, mod: nn.MultiheadAttention, name: str, inp: Any) -> int | None:
        if not (isinstance(inp, tuple) and len(inp) >= 3):
            return None
        q, k, v = inp[:3]
        if not all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in (q, k, v)):
            return None
        j = self._attention_entry(name, "mha")
        a = self.attention[j]
        a.heads = int(mod.num_heads)
        a.bias = mod.in_proj_bias is not None
        a.same_dim = bool(mod._qkv_same_embed_dim)
        a.e0, a.kdim, a.vdim = int(mod.embed_dim), int(k.shape[2]), int(v.shape[2])
        bf = bool(getattr(mod, "batch_first", False))
        ln, nb = (1, 0) if bf else (0, 1)
        a.calls.append((q.shape[ln], k.shape[ln], v.shape[ln], q.shape[nb]))
        return j

    def _record_tattn(self, mod: nn.Module, name: str, x: torch.Tensor) -> int | None:
        qkv = getattr(mod, "qkv", None)
        if x.dim() != 3 or not isinstance(qkv, nn.Linear):
            return None
        j = self._attention_entry(name, "tattn")
        a = self.attention[j]
        a.heads = int(getattr(mod, "num_heads", 1))
        a.bias = qkv.bias is not None
        a.calls.append((x.shape[1], x.shape[0]))
        return j

    def _finish(
        self, model: nn.Module, tp_layer: dict[int, float], tp_att: dict[int, float]
    ) -> None:
        b = self.batch
        for s in self.layers:
            s.batch = b
            s.spatial /= b
            s.norm_macs0 /= b
        for a in self.attention:
            if a.kind == "tattn":
                a.qkv = self._index.get(f"{a.name}.qkv" if a.name else "qkv", -1)
        # Width units: the layers' output widths, then each attention module's embedding width.
        n_l = len(self.layers)
        self._in0 = np.array([s.in0 for s in self.layers], dtype=np.float64)
        self._out0 = np.array([s.out0 for s in self.layers], dtype=np.float64)
        self._e0 = np.array([float(a.e0) for a in self.attention], dtype=np.float64)
        w0 = np.concatenate([self._out0, self._e0])
        # Torch-Pruning's counts of the modelled modules, minus our closed forms, stay fixed.
        corr = 0.0
        for k, tp in tp_layer.items():
            corr += tp / b - _layer_cost(self.layers[k], self._in0[k], self._out0[k])[0]
        for j, tp in tp_att.items():
            corr += tp / b - self._attention_macs(j, self._in0, self._out0, self._e0)
        self.correction = corr
        # Activations / pooling: per sample, fixed part + MACs per channel of each width unit.
        fixed = 0.0
        self._scaled_w = np.zeros(len(w0))
        for op in self.scaled:
            op.macs0 /= b
            coef: dict[int, float] = {}
            traced = 0.0
            for unit, v in op.coef.items():
                u = unit if unit >= 0 else n_l + (-1 - unit)
                coef[u] = coef.get(u, 0.0) + v / b / w0[u]
                traced += v / b
            op.coef = coef
            op.fixed = op.macs0 - traced
            fixed += op.fixed
            for u, v in coef.items():
                self._scaled_w[u] += v
        self.fixed_macs = fixed + corr
        # Layer arrays for vectorised costs: macs = ka*in*out + kb*out, params = pa*in*out + pb*out.
        self._ka, self._kb, self._pa, self._pb = (np.zeros(n_l) for _ in range(4))
        for k, s in enumerate(self.layers):
            m11, p11 = _layer_cost(s, 1.0, 1.0)
            m01, p01 = _layer_cost(s, 0.0, 1.0)
            self._ka[k], self._kb[k] = m11 - m01, m01
            self._pa[k], self._pb[k] = p11 - p01, p01
        # Parameters: every parameter not in a modelled layer or attention module is fixed.
        modelled: set[int] = set()
        for s in self.layers:
            modelled.update(id(p) for p in model.get_submodule(s.name).parameters(recurse=False))
        for a in self.attention:
            if a.kind == "mha":
                mod = model.get_submodule(a.name)
                own = sum(p.numel() for p in mod.parameters())
                a.params_extra = own - _mha_params(a, a.e0)
                modelled.update(id(p) for p in mod.parameters())
        self.fixed_params = float(
            sum(p.numel() for p in model.parameters() if id(p) not in modelled)
        )
        self._a_in = np.zeros((n_l, 0))
        self._a_w = np.zeros((len(w0), 0))
        self._p_unwrapped = np.zeros(0)
        self._w0 = w0
        self.macs0, self.params0 = self._total(self._in0, w0)

    # -- costs --------------------------------------------------------------------------------

    def _attention_macs(self, j: int, cin: np.ndarray, cout: np.ndarray, e: np.ndarray) -> float:
        a = self.attention[j]
        if a.kind == "mha":
            return _mha_macs(a, float(e[j]), self.batch)
        if a.qkv < 0:
            return 0.0
        return _tattn_macs(a, float(cin[a.qkv]), float(cout[a.qkv]), self.batch)

    def _total(self, cin: np.ndarray, w: np.ndarray) -> tuple[float, float]:
        """(MACs, params) at layer input widths ``cin`` and width units ``w``."""
        n_l = len(self.layers)
        cout, e = w[:n_l], w[n_l:]
        macs = float(np.sum(self._ka * cin * cout + self._kb * cout))
        params = float(np.sum(self._pa * cin * cout + self._pb * cout))
        for j, a in enumerate(self.attention):
            macs += self._attention_macs(j, cin, cout, e)
            if a.kind == "mha":
                params += _mha_params(a, float(e[j]))
        macs += self.fixed_macs + float(self._scaled_w @ w)
        return macs, params + self.fixed_params

    def _current_widths(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        cin = np.zeros(len(self.layers))
        cout = np.zeros(len(self.layers))
        for k, s in enumerate(self.layers):
            cin[k], cout[k] = _widths(model.get_submodule(s.name), s.kind)
        e = np.array(
            [float(getattr(model.get_submodule(a.name), "embed_dim", 0)) for a in self.attention],
            dtype=np.float64,
        )
        return cin, np.concatenate([cout, e])

    def per_layer(self, model: nn.Module) -> dict[str, tuple[float, float]]:
        """Per counted module, (MACs per sample, params) at ``model``'s current widths (names as
        when recorded; the keys of Torch-Pruning's ``layer_wise`` counts that are not zero)."""
        cin, w = self._current_widths(model)
        n_l = len(self.layers)
        out: dict[str, tuple[float, float]] = {}
        for k, s in enumerate(self.layers):
            if s.counted:
                out[s.name] = _layer_cost(s, cin[k], w[k])
        for j, a in enumerate(self.attention):
            params = float(sum(p.numel() for p in model.get_submodule(a.name).parameters()))
            out[a.name] = (self._attention_macs(j, cin, w[:n_l], w[n_l:]), params)
        for op in self.scaled:
            m = op.fixed + sum(v * w[u] for u, v in op.coef.items())
            prev = out.get(op.name, (0.0, 0.0))[0]
            out[op.name] = (prev + m, 0.0)
        return out

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """(MACs per sample, params) of ``model`` (the same architecture, possibly pruned)."""
        cin, w = self._current_widths(model)
        macs, _ = self._total(cin, w)
        # Parameters are counted as they are now (all of them, as Torch-Pruning's counter does).
        return macs, float(sum(p.numel() for p in model.parameters()))

    def bind(self, groups: Sequence[ChannelGroup]) -> None:
        """Record, per width and group, how many of the width's channels one group channel holds."""
        n_l = len(self.layers)
        a_in = np.zeros((n_l, len(groups)))
        a_w = np.zeros((len(self._w0), len(groups)))
        p_unwrapped = np.zeros(len(groups))
        modelled = {s.name for s in self.layers} | set(self._att_index)
        for g, grp in enumerate(groups):
            for m in grp.members:
                mult = len(m.idxs) / grp.n_channels
                k = self._index.get(m.name)
                if k is not None:
                    if m.kind == "consumer":
                        a_in[k, g] += mult
                    elif m.kind in ("producer", "depthwise", "norm"):
                        a_w[k, g] += mult
                    continue
                j = self._att_index.get(m.name)
                if j is not None:
                    if self.attention[j].kind == "mha":
                        # in and out members both stand for the embedding width: count it once
                        a_w[n_l + j, g] = max(a_w[n_l + j, g], mult)
                    continue
                if isinstance(m.module, nn.Parameter) and m.name not in modelled and m.idxs:
                    # an unwrapped parameter loses numel / len(idxs) entries per channel removed
                    dim = len(set(m.idxs))
                    if dim in m.module.shape:
                        p_unwrapped[g] += m.module.numel() / dim * mult
        dw = np.array([s.kind == "dwconv" for s in self.layers], dtype=bool)
        a_in[dw] = a_w[:n_l][dw]
        self._a_in, self._a_w, self._p_unwrapped = a_in, a_w, p_unwrapped

    def cost(self, removed_channels: np.ndarray) -> tuple[float, float]:
        """(MACs, params) when group g loses ``removed_channels[g]`` channels."""
        r = np.asarray(removed_channels, dtype=np.float64)
        macs, params = self._total(self._in0 - self._a_in @ r, self._w0 - self._a_w @ r)
        return macs, params - float(self._p_unwrapped @ r)
