"""Analytic MACs and parameter model, from shapes recorded once by forward hooks.

The pruning target is searched by bisection (cut.py), so the cost of a candidate cut must be cheap:
output spatial sizes and token counts are recorded once, and every Conv/Linear/norm layer's cost is a
closed form of its input and output widths. The formulas follow Torch-Pruning's
``count_ops_and_params`` for the same layer types (so the two agree per layer, checked in tests):

* Conv: ``prod(kernel) * in * out / groups * out_spatial`` (+ ``out * out_spatial`` with a bias);
* Linear: ``tokens * in * out`` (+ ``out / batch`` with a bias, Torch-Pruning's convention);
* BatchNorm / LayerNorm / GroupNorm / InstanceNorm: ``numel(input) * (2 if affine else 1)``.

Other operations (activations, pooling, attention products) do not change with the widths of the
modelled layers' weights and are left out: "MACs" in simprune reports mean these layers' MACs.
Widths after a cut are linear in the number of channels removed per group (a consumer reached through
a flatten loses ``stride`` inputs per channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .groups import NORM_TYPES, ChannelGroup, _run_forward


@dataclass
class LayerShape:
    name: str
    kind: str  # "conv" | "dwconv" | "linear" | "norm"
    in0: int
    out0: int
    groups: int = 1
    kernel: int = 1
    spatial: float = 1.0  # conv: output positions per sample; linear: tokens per sample
    bias: bool = False
    batch: int = 1
    norm_macs0: float = 0.0
    norm_params0: int = 0


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
    if s.kind == "conv":
        macs = s.kernel * cin * cout / s.groups * s.spatial
        params = cout * cin / s.groups * s.kernel
        if s.bias:
            macs += cout * s.spatial
            params += cout
        return macs, params
    if s.kind == "dwconv":
        macs = s.kernel * cout * s.spatial
        params = cout * s.kernel
        if s.bias:
            macs += cout * s.spatial
            params += cout
        return macs, params
    if s.kind == "linear":
        macs = s.spatial * cin * cout
        params = cin * cout
        if s.bias:
            macs += cout / s.batch
            params += cout
        return macs, params
    frac = cout / s.out0 if s.out0 else 0.0
    return s.norm_macs0 * frac, s.norm_params0 * frac


class CostModel:
    """MACs/params of a model as a function of how many channels each group loses."""

    def __init__(self, model: nn.Module, example_inputs: Any):
        self.layers: list[LayerShape] = []
        self.ran: list[nn.Module] = []  # every modelled layer that ran in forward
        self._index: dict[str, int] = {}
        records: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}
        names = {m: n for n, m in model.named_modules()}

        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            x = inp[0] if isinstance(inp, tuple) and inp else inp
            o = out[0] if isinstance(out, tuple) else out
            if isinstance(x, torch.Tensor) and isinstance(o, torch.Tensor):
                records.setdefault(names[mod], (mod, x, o))

        hooks = [m.register_forward_hook(hook) for m in model.modules() if _layer_kind(m)]
        try:
            with torch.no_grad():
                _run_forward(model, example_inputs)
        finally:
            for h in hooks:
                h.remove()
        first = example_inputs
        while isinstance(first, (tuple, list)) and first:
            first = first[0]
        if isinstance(first, dict):
            first = next(iter(first.values()))
        batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
        for name, (mod, x, o) in records.items():
            kind = _layer_kind(mod)
            assert kind is not None
            cin, cout = _widths(mod, kind)
            s = LayerShape(name, kind, cin, cout, batch=batch)
            if kind in ("conv", "dwconv"):
                s.groups = int(mod.groups)  # type: ignore[arg-type]
                s.kernel = int(np.prod(mod.kernel_size))  # type: ignore[arg-type]
                s.spatial = float(np.prod(o.shape[2:])) * o.shape[0] / batch
                s.bias = mod.bias is not None
            elif kind == "linear":
                s.spatial = o.numel() / o.shape[-1] / batch
                s.bias = mod.bias is not None
            else:
                affine = bool(
                    getattr(mod, "affine", False) or getattr(mod, "elementwise_affine", False)
                )
                s.norm_macs0 = x.numel() * (2 if affine else 1) / batch
                s.norm_params0 = sum(p.numel() for p in mod.parameters(recurse=False))
            self._index[name] = len(self.layers)
            self.layers.append(s)
            self.ran.append(mod)
        modelled = {id(p) for n in self._index for p in model.get_submodule(n).parameters(False)}
        self.fixed_params = sum(p.numel() for p in model.parameters() if id(p) not in modelled)
        self._in0 = np.array([s.in0 for s in self.layers], dtype=np.float64)
        self._out0 = np.array([s.out0 for s in self.layers], dtype=np.float64)
        self.macs0, self.params0 = self._total(self._in0, self._out0)
        self._a_in = np.zeros((len(self.layers), 0))
        self._a_out = np.zeros((len(self.layers), 0))

    def _total(self, cin: np.ndarray, cout: np.ndarray) -> tuple[float, float]:
        macs = params = 0.0
        for s, i, o in zip(self.layers, cin, cout, strict=True):
            m, p = _layer_cost(s, float(i), float(o))
            macs += m
            params += p
        return macs, params + self.fixed_params

    def per_layer(self, model: nn.Module) -> dict[str, tuple[float, float]]:
        """Per-layer (MACs, params) of ``model``'s current widths (names as when recorded)."""
        out = {}
        for s in self.layers:
            mod = model.get_submodule(s.name)
            cin, cout = _widths(mod, s.kind)
            out[s.name] = _layer_cost(s, cin, cout)
        return out

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """(MACs per sample, params) of ``model`` (the same architecture, possibly pruned)."""
        cin = np.zeros(len(self.layers))
        cout = np.zeros(len(self.layers))
        for k, s in enumerate(self.layers):
            cin[k], cout[k] = _widths(model.get_submodule(s.name), s.kind)
        # Parameters outside the modelled layers (e.g. pruned unwrapped parameters) are counted as
        # they are now.
        macs, _ = self._total(cin, cout)
        params = float(sum(p.numel() for p in model.parameters()))
        return macs, params

    def bind(self, groups: Sequence[ChannelGroup]) -> None:
        """Record, per layer and group, how many of the layer's channels one group channel holds."""
        a_in = np.zeros((len(self.layers), len(groups)))
        a_out = np.zeros((len(self.layers), len(groups)))
        for g, grp in enumerate(groups):
            for m in grp.members:
                k = self._index.get(m.name)
                if k is None:
                    continue
                mult = len(m.idxs) / grp.n_channels
                if m.kind == "consumer":
                    a_in[k, g] += mult
                elif m.kind in ("producer", "depthwise", "norm"):
                    a_out[k, g] += mult
        dw = np.array([s.kind == "dwconv" for s in self.layers])
        a_in[dw] = a_out[dw]
        self._a_in, self._a_out = a_in, a_out

    def cost(self, removed_channels: np.ndarray) -> tuple[float, float]:
        """(MACs, params) when group g loses ``removed_channels[g]`` channels."""
        r = np.asarray(removed_channels, dtype=np.float64)
        return self._total(self._in0 - self._a_in @ r, self._out0 - self._a_out @ r)
