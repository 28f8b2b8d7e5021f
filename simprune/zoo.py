"""Models shipped with simprune: a small ResNet-style CNN for 28x28 digits, trained on the shipped
MNIST sample (``scripts/train_baseline.py`` reproduces the weights)."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from .datasets import DATA_DIR

BASELINE_WEIGHTS = os.path.join(DATA_DIR, "mnist_resnet.pt")
BASELINE_META = os.path.join(DATA_DIR, "mnist_resnet.json")


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus identity (or 1x1 conv-BN projection) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return self.relu(out + short)


class MnistResNet(nn.Module):
    """A ResNet for 1x28x28 inputs: stem (3x3 conv-BN-ReLU), three stages of two basic blocks
    (widths ``width, 2*width, 4*width``; strides 1, 2, 2), global average pooling, a linear classifier.
    With ``width=16``: 0.18 M parameters, 20.6 M MACs per image.
    """

    def __init__(self, width: int = 16, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def load_baseline() -> MnistResNet:
    """The shipped trained baseline (eval mode). Its training record: :func:`baseline_info`."""
    if not os.path.exists(BASELINE_WEIGHTS):
        raise FileNotFoundError(
            f"{BASELINE_WEIGHTS} is missing; run `python scripts/train_baseline.py` to create it"
        )
    info = baseline_info()
    model = MnistResNet(width=int(info.get("width", 16)))
    model.load_state_dict(torch.load(BASELINE_WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def baseline_info() -> dict:
    """Training record of the shipped weights (seed, epochs, versions, test accuracy, command)."""
    with open(BASELINE_META) as f:
        return json.load(f)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (eval mode is restored to the caller's state)."""
    was_training = model.training
    model.eval()
    correct = 0
    for s in range(0, len(x), batch_size):
        correct += int((model(x[s : s + batch_size]).argmax(1) == y[s : s + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)
