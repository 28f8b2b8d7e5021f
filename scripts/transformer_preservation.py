"""Function preservation on transformers: relative logit error after pruning MLP neurons.

For each model (random initialisation: a sanity measure, not evidence of quality on trained
weights) and each MACs reduction, ``simprune.prune`` picks the widths (one global threshold); the
same widths are then filled by other criteria through the same rewrite (``apply_plan`` with edited
kept lists, no merge):

* ``similarity+merge``: simprune's plan as returned (representatives, least-squares merge);
* ``similarity``: the same kept neurons, merges dropped;
* ``L1``: per group, the neurons with the largest L1 norm of all their weights (producer rows and
  consumer columns, as Torch-Pruning's group MagnitudeImportance(p=1));
* ``random``: per group, a seeded random choice.

Error: ||y_pruned - y||_F / ||y||_F on random token batches (8 x 64 tokens), y the logits (BERT:
the last hidden state). ``--duplicates F`` plants near-duplicate neurons first (a fraction F of each
MLP's neurons copied from others, plus 1 % noise), where redundancy exists to be found.

``--heads`` measures attention heads instead (``prune_heads=True``, MLPs ignored): in every
attention module key/value head 1 is made a near-copy of head 0 (with their query heads, 1 %
noise), and a quarter of the heads (half with 2 key/value heads) are removed.

    python scripts/transformer_preservation.py [--duplicates 0.3] [--heads] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time

import torch
import transformers as tf

import simprune
from simprune.pruning import apply_plan, prune
from simprune.pruning.plan import PruningPlan

VOCAB = 512


def models() -> dict[str, tuple[torch.nn.Module, str | None]]:
    torch.manual_seed(0)
    llama = tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128,
        )
    )  # fmt: skip
    qwen2 = tf.Qwen2ForCausalLM(
        tf.Qwen2Config(
            vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
        )
    )  # fmt: skip
    gpt2 = tf.GPT2LMHeadModel(
        tf.GPT2Config(
            vocab_size=VOCAB, n_embd=256, n_layer=4, n_head=8, n_inner=1024, n_positions=128,
            bos_token_id=0, eos_token_id=0,
        )
    )  # fmt: skip
    bert = tf.BertModel(
        tf.BertConfig(
            vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
            num_attention_heads=8, max_position_embeddings=128,
        )
    )  # fmt: skip
    return {
        "LLaMA": (llama.eval(), "logits"),
        "Qwen2 (GQA)": (qwen2.eval(), "logits"),
        "GPT-2": (gpt2.eval(), "logits"),
        "BERT": (bert.eval(), "last_hidden_state"),
    }


def plant_duplicates(model: torch.nn.Module, plan: PruningPlan, frac: float, seed: int) -> None:
    """Copy a fraction of each MLP group's neurons from others (+1 % noise), in every producer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gp in plan.groups:
            n = gp.n_channels
            k = int(frac * n)
            perm = torch.randperm(n, generator=g)
            dst, src = perm[:k], perm[k : 2 * k]
            for name, kind in gp.members:
                if kind != "producer":
                    continue
                mod = model.get_submodule(name)
                w = mod.weight if isinstance(mod, torch.nn.Linear) else mod.weight.t()
                rows = w[src] * (1 + 0.01 * torch.randn(k, w.shape[1], generator=g))
                w[dst] = rows
                b = getattr(mod, "bias", None)
                if b is not None:
                    b[dst] = b[src]


def l1_scores(model: torch.nn.Module, members: list[list[str]], n: int) -> torch.Tensor:
    s = torch.zeros(n, dtype=torch.float64)
    for name, kind in members:
        mod = model.get_submodule(name)
        w = mod.weight.detach().double()
        if not isinstance(mod, torch.nn.Linear):  # GPT-2 Conv1D: (in, out)
            w = w.t()
        s += w.abs().sum(1) if kind == "producer" else w.abs().sum(0)
    return s


def with_kept(plan: PruningPlan, kept: list[list[int]]) -> PruningPlan:
    p = copy.deepcopy(plan)
    for gp, k in zip(p.groups, kept, strict=True):
        gp.kept = sorted(int(i) for i in k)
        gp.merges = []
        if hasattr(gp, "shifts"):
            gp.shifts = []
    return p


def rel_err(model, pruned, batches, out_name) -> float:
    num = den = 0.0
    with torch.no_grad():
        for ids in batches:
            y = getattr(model(input_ids=ids), out_name).double()
            z = getattr(pruned(input_ids=ids), out_name).double()
            num += float(((z - y) ** 2).sum())
            den += float((y**2).sum())
    return (num / den) ** 0.5


def plant_head_copies(model: torch.nn.Module, seed: int) -> list:
    """Key/value head 1 of every attention module becomes a near-copy of head 0 (query heads too)."""
    from simprune.pruning.transformers import attention_spec, conv1d_to_linear

    conv = copy.deepcopy(model)
    conv1d_to_linear(conv)
    specs = [attention_spec(conv, n) for n, _ in conv.named_modules()]
    specs = [sp for sp in specs if sp is not None and not isinstance(sp, str)]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sp in specs:
            d, rep = sp.head_dim, sp.n_rep

            def cp(name: str, off: int, a: int, b: int, d: int = d) -> None:
                lin = model.get_submodule(name)
                w = lin.weight if isinstance(lin, torch.nn.Linear) else lin.weight.t()
                src = w[off + b * d : off + (b + 1) * d]
                w[off + a * d : off + (a + 1) * d] = src * (
                    1 + 0.01 * torch.randn(src.shape, generator=g)
                )
                if lin.bias is not None:
                    lin.bias[off + a * d : off + (a + 1) * d] = lin.bias[
                        off + b * d : off + (b + 1) * d
                    ]

            cp(sp.k, sp.k_off, 1, 0)
            cp(sp.v, sp.v_off, 1, 0)
            for r in range(rep):
                cp(sp.q, sp.q_off, rep + r, r)
    return specs


def head_l1(model: torch.nn.Module, sp) -> torch.Tensor:
    """L1 norm of each key/value head's unit: its q, k, v rows and output-projection columns."""
    from simprune.pruning.transformers import conv1d_to_linear

    conv = copy.deepcopy(model)
    conv1d_to_linear(conv)
    d, rep = sp.head_dim, sp.n_rep

    def w(name: str) -> torch.Tensor:
        return conv.get_submodule(name).weight.detach().double().abs()

    out = torch.zeros(sp.n_kv, dtype=torch.float64)
    for g in range(sp.n_kv):
        for name, off, h in ((sp.k, sp.k_off, g), (sp.v, sp.v_off, g)):
            out[g] += w(name)[off + h * d : off + (h + 1) * d].sum()
        for r in range(rep):
            h = g * rep + r
            out[g] += w(sp.q)[sp.q_off + h * d : sp.q_off + (h + 1) * d].sum()
            out[g] += w(sp.o)[:, h * d : (h + 1) * d].sum()
    return out


def heads_rows(batches: list[torch.Tensor], x: torch.Tensor) -> list[dict]:
    rows = []
    for mname, (model, out_name) in models().items():
        specs = plant_head_copies(model, seed=11)
        n_kv = specs[0].n_kv
        mlp = prune(model, x, pruning_ratio=0.0, verify=False, progress=False).plan.groups
        ignored = [model.get_submodule(gp.root) for gp in mlp]
        ratio = 1 / n_kv  # exactly the planted copies, if found
        pruned, plan, _ = prune(
            model, x, pruning_ratio=ratio, cut="uniform", prune_heads=True,
            ignored_layers=ignored, output_transform=out_name, progress=False,
        )  # fmt: skip
        gen = torch.Generator().manual_seed(5)
        l1, rnd = [], []
        for gp in plan.groups:
            n_units = gp.n_channels // gp.ch_groups
            k = len(gp.kept) // gp.ch_groups
            s = head_l1(model, specs[len(l1)])
            units = [
                torch.topk(s, k).indices.tolist(),
                torch.randperm(n_units, generator=gen)[:k].tolist(),
            ]
            l1.append([u + j * n_units for u in units[0] for j in range(gp.ch_groups)])
            rnd.append([u + j * n_units for u in units[1] for j in range(gp.ch_groups)])
        errs = {
            "similarity+merge": rel_err(model, pruned, batches, out_name),
            "similarity": rel_err(
                model, apply_plan(model, with_kept(plan, [gp.kept for gp in plan.groups])),
                batches, out_name,
            ),
            "L1": rel_err(model, apply_plan(model, with_kept(plan, l1)), batches, out_name),
            "random": rel_err(model, apply_plan(model, with_kept(plan, rnd)), batches, out_name),
        }  # fmt: skip
        rows.append(
            {"model": mname, "heads_removed": ratio, **{k: round(v, 5) for k, v in errs.items()}}
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--macs", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--duplicates", type=float, default=0.0)
    ap.add_argument("--heads", action="store_true", help="attention heads (planted copies)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(123)
    batches = [torch.randint(0, VOCAB, (8, 64), generator=g) for _ in range(2)]
    x = batches[0][:1, :32]
    rows = []
    t0 = time.time()
    cols = ["similarity+merge", "similarity", "L1", "random"]
    if args.heads:
        rows = heads_rows(batches, x)
        print("| model | key/value heads removed (of each module) | " + " | ".join(cols) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in cols) + " |")
        for r in rows:
            vals = " | ".join(f"{r[c]:.4f}" for c in cols)
            print(f"| {r['model']} | {r['heads_removed']:.1%} | {vals} |")
        print(json.dumps({"seconds": round(time.time() - t0, 1), "heads": True}))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": rows}, f, indent=1)
        return 0
    for mname, (model, out_name) in models().items():
        if args.duplicates:
            probe = prune(model, x, macs_reduction=0.1, verify=False, progress=False).plan
            plant_duplicates(model, probe, args.duplicates, seed=7)
        for macs in args.macs:
            pruned, plan, report = prune(
                model, x, macs_reduction=macs, output_transform=out_name, progress=False
            )
            gen = torch.Generator().manual_seed(5)
            l1 = []
            rnd = []
            for gp in plan.groups:
                k = len(gp.kept)
                s = l1_scores(model, gp.members, gp.n_channels)
                l1.append(torch.topk(s, k).indices.tolist())
                rnd.append(torch.randperm(gp.n_channels, generator=gen)[:k].tolist())
            errs = {
                "similarity+merge": rel_err(model, pruned, batches, out_name),
                "similarity": rel_err(
                    model,
                    apply_plan(model, with_kept(plan, [gp.kept for gp in plan.groups])),
                    batches,
                    out_name,
                ),
                "L1": rel_err(model, apply_plan(model, with_kept(plan, l1)), batches, out_name),
                "random": rel_err(
                    model, apply_plan(model, with_kept(plan, rnd)), batches, out_name
                ),
            }
            row = {
                "model": mname,
                "macs_reduction": round(report.macs_reduction, 4),
                "mlp_neurons_removed": round(
                    plan.n_removed / sum(gp.n_channels for gp in plan.groups), 4
                ),
                **{k: round(v, 5) for k, v in errs.items()},
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print("| model | MACs removed | MLP neurons removed | " + " | ".join(cols) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in cols) + " |")
    for r in rows:
        vals = " | ".join(f"{r[c]:.4f}" for c in cols)
        print(
            f"| {r['model']} | {r['macs_reduction']:.1%} | {r['mlp_neurons_removed']:.1%} | "
            f"{vals} |"
        )
    meta = {
        "simprune": simprune.__version__,
        "torch": torch.__version__,
        "transformers": tf.__version__,
        "machine": platform.processor() or platform.machine(),
        "duplicates": args.duplicates,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "meta": meta}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
