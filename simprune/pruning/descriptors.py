"""Descriptors of a channel group (metric.md sections 1-2).

Each producer (a Conv/Linear whose output channels are in the group, or a depthwise conv) gives one
descriptor row per channel: ``gaussian`` ([beta, gamma * w/|w|]) when the BatchNorm that directly
follows it is in the group, ``linear`` ([bias, w]) otherwise (metric.md: "groups without BN use
linear"). A coupled group (residual adds, concatenations, depthwise chains) concatenates the rows of
every producer, so its squared distance is the sum of the producers' squared distances.

With channel groups (a grouped conv in the group), a pruning unit is one position in every conv group;
its row concatenates the rows of those channels.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine import BN_METRICS, metric_info
from ..similarity import channel_descriptors
from .groups import ChannelGroup, Member


def _producer_weight(m: Member) -> torch.Tensor:
    mod = m.module
    w = mod.weight.detach()
    if isinstance(mod, nn.modules.conv._ConvNd) and mod.transposed:
        # ConvTranspose weights are (in, out/groups, ...): output channel g * out/groups + k (conv
        # group g) is column k of the rows of group g's inputs, g * in/groups ... (g + 1) * in/groups.
        g = mod.groups
        ipg = w.shape[0] // g
        w = w.reshape(g, ipg, *w.shape[1:]).transpose(1, 2).reshape(-1, ipg, *w.shape[2:])
    return w


def _rows(m: Member, bn: nn.Module | None, metric: str) -> torch.Tensor:
    w = _producer_weight(m)
    bias = getattr(m.module, "bias", None)
    if metric in BN_METRICS:
        if bn is None:
            v = channel_descriptors(w, metric="linear", bias=bias)
        else:
            n = w.shape[0]
            gamma = bn.weight if bn.weight is not None else torch.ones(n)
            beta = bn.bias if bn.bias is not None else torch.zeros(n)
            v = channel_descriptors(w, metric=metric, gamma=gamma, beta=beta)
    elif metric == "linear":
        v = channel_descriptors(w, metric="linear", bias=bias)
    else:
        v = channel_descriptors(w, metric=metric)
    return v


def activation_descriptors(group: ChannelGroup) -> torch.Tensor:
    """``activation`` descriptors (n_channels, n_channels) float64: a square root V of the covariance
    S of the group's channels at its consumers' inputs (V V^T = S, :mod:`simprune.pruning.stats`),
    so that |v_i - v_j|^2 = S_ii + S_jj - 2 S_ij = Var(z_i - z_j) = E[(z_i - z_j)^2] on the centred
    inputs, and |v_i|^2 = Var(z_i) (a channel's energy)."""
    from .stats import covariance_sqrt

    st = group.stats
    if st is None:
        raise ValueError(
            f"metric='activation' needs statistics of group {group.root_name!r} from calibration "
            "data (prune(..., calibration_data=...)); none were collected (no consumer input "
            "holds all of its channels)"
        )
    return covariance_sqrt(st.cov)


def group_descriptors(group: ChannelGroup, metric: str = "gaussian") -> torch.Tensor:
    """Descriptor matrix (n_units, d) of a channel group on the weights' device.

    ``activation``: from the group's calibration statistics (:func:`activation_descriptors`).

    float64 when any producer is float64, float32 otherwise: the engine's float32 "exact" mode keeps
    distances to <= 1e-6 relative error (exact zeros for duplicates), ample for ranking merges, at
    about half the cost of float64 on the CPU.

    Rows follow the group's root channel order; a producer that covers only some of the group's
    channels (a concatenation input) contributes zeros for the others.
    """
    metric_info(metric)
    n = group.n_channels
    if metric == "activation":
        v = activation_descriptors(group)
        return _per_unit(v, group.ch_groups)
    dtype = (
        torch.float64
        if any(m.module.weight.dtype == torch.float64 for m in group.producers())
        else torch.float32
    )
    blocks = []
    for m in group.producers():
        try:
            v = _rows(m, group.bn_of.get(m.name), metric)
        except ValueError as e:
            raise ValueError(f"layer {m.name!r}: {e}") from e
        v = v.to(dtype)
        full = torch.zeros(n, v.shape[1], dtype=dtype, device=v.device)
        full[torch.tensor(m.root_idxs, device=v.device)] = v[torch.tensor(m.idxs, device=v.device)]
        blocks.append(full)
    return _per_unit(torch.cat(blocks, dim=1), group.ch_groups)


def _per_unit(v: torch.Tensor, cg: int) -> torch.Tensor:
    if cg > 1:
        # (cg * gs, d) -> (gs, cg * d): unit u holds channels u, u + gs, u + 2 gs, ...
        gs = v.shape[0] // cg
        v = v.reshape(cg, gs, -1).permute(1, 0, 2).reshape(gs, -1)
    return v.contiguous()


def check_finite_model(model: nn.Module) -> None:
    """ValueError naming the first parameter or buffer that holds NaN or inf."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or t.numel() == 0:
            continue
        # One reduction instead of a boolean copy: NaN/inf propagate into the sum; a finite sum
        # proves every entry finite (an overflowing sum of finite values gets the exact check).
        with torch.no_grad():
            total = t.detach().sum(dtype=torch.float64)
        if bool(torch.isfinite(total)):
            continue
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"{name!r} has {bad} non-finite value(s) (NaN or inf); pruning needs finite weights"
            )
