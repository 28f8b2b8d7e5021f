"""Train the shipped baseline (simprune.zoo.MnistResNet) on the shipped 4000 MNIST training images.

    python scripts/train_baseline.py            # writes simprune/data/mnist_resnet.{pt,json}

Deterministic for a given torch version and thread count (both are recorded in the JSON): fixed seed,
deterministic algorithms, data order and augmentation drawn from one seeded generator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simprune.datasets import load_mnist5k  # noqa: E402
from simprune.demo import random_shift  # noqa: E402  (the augmentation, shared with fine-tuning)
from simprune.zoo import BASELINE_META, BASELINE_WEIGHTS, MnistResNet, evaluate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=BASELINE_WEIGHTS)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(args.seed)
    x_tr, y_tr = load_mnist5k("train", order="file")  # the shipped weights' order
    x_te, y_te = load_mnist5k("test", order="file")
    model = MnistResNet(width=args.width)
    opt = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    steps = args.epochs * ((len(x_tr) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=g)
        total = 0.0
        for s in range(0, len(x_tr), args.batch_size):
            idx = perm[s : s + args.batch_size]
            xb = random_shift(x_tr[idx], g)
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        acc = evaluate(model, x_te, y_te)
        print(
            f"epoch {epoch + 1:2d}  loss {total / len(x_tr):.4f}  test acc {acc:.4f}  ({time.time() - t0:.0f} s)"
        )
    acc = evaluate(model, x_te, y_te)
    torch.save(model.state_dict(), args.out)
    meta = {
        "model": "simprune.zoo.MnistResNet",
        "width": args.width,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "threads": args.threads,
        "test_accuracy": acc,
        "train_images": len(x_tr),
        "test_images": len(x_te),
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python scripts/train_baseline.py " + " ".join(sys.argv[1:]),
    }
    meta_path = (
        os.path.splitext(args.out)[0] + ".json" if args.out != BASELINE_WEIGHTS else BASELINE_META
    )
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
