"""What the benchmark scripts share: machine facts, synthetic data, the MLP, and the plain training loop."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_data(samples: int, features: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float32 inputs [samples, features] and int64 labels in 0..classes-1, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(samples, features, generator=g, dtype=torch.float32)
    y = torch.randint(0, classes, (samples,), generator=g, dtype=torch.int64)
    return X, y


def make_mlp(seed: int, features: int, hidden: int, classes: int) -> nn.Module:
    """MLP features-hidden-classes (ReLU), its initial parameters fixed by ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def mlp_factory(*sizes: int, act: type[nn.Module] = nn.ReLU) -> Callable[[], nn.Module]:
    """A builder of the MLP ``sizes[0]-...-sizes[-1]`` with ``act`` between its layers (a fresh one each call)."""
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        return nn.Sequential(*layers[:-1])

    return make


def plain_loop(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The loop everyone writes (SGD lr 0.01, cross-entropy, loss.item() per step); returns its seconds."""
    start = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    total = 0.0
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
    return time.perf_counter() - start
