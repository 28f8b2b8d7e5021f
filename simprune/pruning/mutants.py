"""Plausible bugs in the pruning decisions, each of which the test suite must catch.

``scripts/mutation_check.py`` applies every mutant below to a temporary copy of the repository and
runs the listed tests against it: a mutant that survives (the tests still pass) is a decision the
suite does not pin. The list lives next to the code it mutates: a refactor that changes one of the
``old`` snippets makes the script fail loudly ("not found") until the list is updated.

Each mutant: ``file`` (relative to this folder), ``old`` (must occur exactly once), ``new``,
``tests`` (pytest arguments that must fail with the mutant) and ``why`` (the decision it breaks).
"""

from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "no-merges-below-threshold",
        "budget.py",
        "    raw_lo = [c.merges_at(float(cand[lo])) if lo >= 0 else 0 for c in curves]",
        "    raw_lo = [0 for c in curves]",
        ("tests/test_prune_budget.py",),
        "every merge strictly below the global threshold is applied",
    ),
    Mutant(
        "ties-in-group-order",
        "budget.py",
        "    pending = sorted(\n        ((m + 1) / c.n_units, g)",
        "    pending = list(\n        ((m + 1) / c.n_units, g)",
        ("tests/test_prune_budget.py",),
        "merges tied at the threshold are split across groups in proportion to their size",
    ),
    Mutant(
        "no-scale-free-heights",
        "budget.py",
        "    h = np.maximum.accumulate(z[:, 2]) / scale if n > 1 else np.zeros(0)",
        "    h = np.maximum.accumulate(z[:, 2]) if n > 1 else np.zeros(0)",
        ("tests/test_prune_budget.py",),
        "heights are divided by the group's RMS descriptor norm before the global cut",
    ),
    Mutant(
        "first-kept-representative",
        "merge.py",
        "            reps.append(cands[int(torch.argmin(d))])",
        "            reps.append(cands[0])",
        ("tests/test_prune_merge.py",),
        "a removed unit merges into the nearest kept unit of its cluster",
    ),
    Mutant(
        "lowest-energy-representative",
        "merge.py",
        "        energy = (v * v).sum(1)\n",
        "        energy = -(v * v).sum(1)\n",
        ("tests/test_prune_merge.py",),
        "each cluster keeps its highest-energy units",
    ),
    Mutant(
        "parameters-only-finite-check",
        "descriptors.py",
        "    for name, t in list(model.named_parameters()) + list(model.named_buffers()):",
        "    for name, t in list(model.named_parameters()):",
        ("tests/test_prune_refusals.py",),
        "NaN/Inf BatchNorm buffers are refused like parameters",
    ),
    Mutant(
        "nan-calibration-accepted",
        "calibrate.py",
        "            if x.is_floating_point() and not bool(torch.isfinite(x).all()):",
        "            if False:",
        ("tests/test_prune_refusals.py",),
        "NaN/Inf calibration data is refused before it reaches the statistics",
    ),
    Mutant(
        "plan-not-checked",
        "plan.py",
        "    for gp in group_plans:\n        gp.check()\n",
        "",
        ("tests/test_prune_refusals.py",),
        "a hand-built plan is checked before any rewrite",
    ),
    Mutant(
        "members-not-compared",
        "plan.py",
        "        _check_group(gp, grp)",
        "        pass",
        ("tests/test_prune_refusals.py",),
        "a replayed plan's members (names and kinds) must match the model's",
    ),
    # Targets, guards and options of simprune.prune (tests/test_prune_api.py).
    Mutant(
        "target-tolerance-five-percent",
        "api.py",
        "TARGET_TOLERANCE = 0.01",
        "TARGET_TOLERANCE = 0.05",
        ("tests/test_prune_api.py::test_params_miss_is_warned_with_the_value_reached",),
        "a MACs/params target is met to +-1 %; a 1.07 % miss is warned",
    ),
    Mutant(
        "target-miss-not-warned",
        "api.py",
        "        if abs(res.cost - goal) / res.cost0 > TARGET_TOLERANCE:",
        "        if False:",
        ("tests/test_prune_api.py::test_params_miss_is_warned_with_the_value_reached",),
        "a target missed by more than 1 % is warned (the documented outcome of a coarse model)",
    ),
    Mutant(
        "target-miss-warns-the-target",
        "api.py",
        "met only to {1.0 - res.cost / res.cost0:.4f}",
        "met only to {value:.4f}",
        ("tests/test_prune_api.py::test_params_miss_is_warned_with_the_value_reached",),
        "the 'met only to' warning names the value actually reached",
    ),
    Mutant(
        "unreachable-target-not-raised",
        "api.py",
        "        if (res.min_cost - goal) / res.cost0 > TARGET_TOLERANCE:",
        "        if False:",
        ("tests/test_prune_api.py::test_min_keep_ratio_guard",),
        "a target beyond the deepest cut the guards allow raises, naming that limit",
    ),
    Mutant(
        "merge-true-is-sum",
        "api.py",
        '        merge_mode = "ls"',
        '        merge_mode = "sum"',
        ("tests/test_prune_api.py::test_merge_true_is_ls",),
        "merge=True is the least-squares merge",
    ),
    Mutant(
        "representative-ignored",
        "api.py",
        "vc, labels, method=representative, keep_per_cluster=keep_per_cluster",
        'vc, labels, method="energy", keep_per_cluster=keep_per_cluster',
        ("tests/test_prune_api.py::test_representative_energy_and_medoid_differ_as_documented",),
        "representative='medoid' keeps each cluster's medoid",
    ),
    Mutant(
        "min-keep-rounded-down",
        "budget.py",
        "    min_kept = max(1, int(math.ceil(min_keep_ratio * n - 1e-9)))",
        "    min_kept = max(1, int(min_keep_ratio * n))",
        ("tests/test_prune_api.py::test_uniform_ratio_removes_the_same_fraction_of_every_group",),
        "every group keeps at least ceil(min_keep_ratio * n) units",
    ),
    Mutant(
        "uniform-ratio-truncated",
        "budget.py",
        "            want = c.n_units - int(round(q * c.n_units))",
        "            want = c.n_units - int(q * c.n_units)",
        ("tests/test_prune_api.py::test_uniform_ratio_removes_the_same_fraction_of_every_group",),
        "a uniform ratio q removes round(q * n) units of every group",
    ),
    Mutant(
        "round-to-rounded-down",
        "budget.py",
        "int(math.ceil(kept_ch / step)) * step",
        "int(kept_ch // step) * step",
        ("tests/test_prune_api.py::test_round_to_rounds_up",),
        "round_to rounds the kept channels up to a multiple (at most all)",
    ),
    Mutant(
        "round-to-ignores-conv-groups",
        "budget.py",
        "            step = math.lcm(round_to, self.ch_groups)",
        "            step = round_to",
        ("tests/test_prune_api.py::test_round_to",),
        "with conv groups, round_to keeps a multiple of lcm(round_to, groups) channels",
    ),
    Mutant(
        "ls-coefficient-energy-ratio",
        "merge.py",
        '        num, den = np.einsum("ij,ij->i", vj, vr), np.einsum("ij,ij->i", vr, vr)',
        '        num, den = np.einsum("ij,ij->i", vj, vj), np.einsum("ij,ij->i", vr, vr)',
        ("tests/test_prune_api.py::test_representative_energy_and_medoid_differ_as_documented",),
        "the ls coefficient is <v_j, v_r> / <v_r, v_r>",
    ),
    # The rewrite against independent oracles (tests/test_prune_replay.py, test_prune_layers.py).
    Mutant(
        "flatten-block-folded-once",
        "merge.py",
        "        pos[t] = li\n",
        "        pos[t] = li[:1] * len(li)\n",
        (
            "tests/test_prune_replay.py::test_replay_of_a_hand_made_plan_equals_the_hand_built_model",
        ),
        "a consumer reached through a flatten folds the whole block of a channel's inputs",
    ),
    Mutant(
        "merge-and-prune-group-by-group",
        "plan.py",
        "            apply_merges(grp, [(int(j), int(r), float(a)) for j, r, a in gp.merges])\n"
        "    for gp, grp in zip(group_plans, groups, strict=True):\n"
        "        removed = gp.removed\n",
        "            apply_merges(grp, [(int(j), int(r), float(a)) for j, r, a in gp.merges])\n"
        "        removed = gp.removed\n"
        "        if removed:\n"
        "            mod = model.get_submodule(gp.root)\n"
        "            pruner = dg.get_pruner_of_module(mod)\n"
        "            dg.get_pruning_group(mod, pruner.prune_out_channels, removed).prune()\n"
        "    for gp, grp in []:\n"
        "        removed = gp.removed\n",
        ("tests/test_prune_layers.py::test_replay_does_not_depend_on_the_order_of_the_groups",),
        "all merges run before any prune: a pruned concatenation input shifts the other's columns",
    ),
    Mutant(
        "groupnorm-groups-ignored",
        "groups.py",
        "        elif isinstance(mod, nn.GroupNorm) and mod.num_groups > 1:",
        "        elif False:",
        ("tests/test_prune_layers.py::test_groupnorm_loses_the_same_positions_in_every_group",),
        "a GroupNorm-coupled group loses the same positions in every GroupNorm group",
    ),
    Mutant(
        "grouped-conv-transpose-pruned",
        "groups.py",
        "        why = _unprunable(members)",
        "        why = None",
        ("tests/test_prune_layers.py::test_grouped_conv_transpose_is_skipped_with_a_reason",),
        "groups with a grouped ConvTranspose (Torch-Pruning cannot rewrite it) are skipped",
    ),
    Mutant(
        "conv-transpose-descriptor-ungrouped",
        "descriptors.py",
        "        w = w.reshape(g, ipg, *w.shape[1:]).transpose(1, 2).reshape(-1, ipg, *w.shape[2:])",
        "        w = w.transpose(0, 1)",
        ("tests/test_prune_layers.py::test_duplicates_removed_and_output_unchanged",),
        "a (depthwise) ConvTranspose's output channels are read per conv group",
    ),
    # Transformers (tests/test_prune_transformers.py).
    Mutant(
        "gated-mlp-up-not-coupled",
        "transformers.py",
        '                    producers.add(o)\n                    stack.append(("fwd", o))\n',
        "                    continue\n",
        (
            "tests/test_prune_transformers.py::"
            "test_root_search_is_bounded_and_refuses_non_mlp_roots",
        ),
        "a gated MLP's up_proj is a co-producer of gate_proj's neurons (one group, both rows)",
    ),
    Mutant(
        "head-check-ignores-merges",
        "transformers.py",
        "        y[..., src] += a * x[..., dst]\n",
        "        pass\n",
        ("tests/test_prune_transformers.py::test_duplicate_heads_removed_exactly[llama]",),
        "in the heads' check a merged head reads its representative's features times the "
        "coefficient",
    ),
    Mutant(
        "gpt2-split-size-kept",
        "transformers.py",
        "        att.split_size = e\n",
        "        pass\n",
        ("tests/test_prune_transformers.py::test_heads_pruned_verified_and_counts_updated[gpt2]",),
        "GPT-2's split of the fused c_attn follows the number of heads kept",
    ),
    Mutant(
        "use-cache-not-restored",
        "api.py",
        "    set_use_cache(work, use_cache)\n    return PruneResult",
        "    return PruneResult",
        ("tests/test_prune_transformers.py::test_keyword_inputs_and_output_name_recorded_in_plan",),
        "a Hugging Face model's use_cache is off only while pruning",
    ),
)
