"""One optimizer step: gdlab's adapter against torch.optim (its default foreach path, and its fused path).

What is measured: the wall time of ``optimizer.step()`` alone (gradients are set once, before timing, and stay the
same), per step, for Adam, AdamW and SGD with momentum 0.9, on two parameter lists built with the shapes of real
networks (values random, float32):

- ``resnet18``: the 62 tensors of torchvision's ResNet-18 (convolutions, batch-norm weights and biases, the
  1000-way classifier), 11.7M parameters;
- ``gpt2``: the 148 tensors of GPT-2 small (token and position embeddings, 12 blocks of attention and MLP with
  their layer norms, the final layer norm), 124.4M parameters.

Sides: ``gdlab`` (``gdlab.optim.Optimizer`` with the alias, as ``gdlab.fit`` builds it: the fused kernel where the
step allows), ``gdlab-plain`` (the same with ``fused=False``: the transform chain, for reference), ``torch``
(``torch.optim.Adam/AdamW/SGD`` with its defaults: on a GPU the foreach path, on a CPU torch's default is the
single-tensor loop), ``torch-foreach`` (``foreach=True``) and ``torch-fused`` (``fused=True``). All sides step the
same parameter tensors, each with its own optimizer state, lr 1e-6 so the values stay put. One warm-up step per
side, then ``--rounds`` rounds; in each round every side runs ``--steps`` steps, the sides' order rotating from
round to round. Per side the median step time over rounds.

The floor is the bytes a step must move over the measured memory bandwidth (a large tensor copy, read + write):
AdamW and Adam in fp32 move 28 bytes per parameter (read p, g, m, v; write p, m, v), SGD-momentum 20.

Target on CPU: gdlab no slower than torch's default nor its foreach path (gdlab / torch <= 1.0, gdlab /
torch-foreach <= 1.0) and within 1.3x of torch's fused path (gdlab / torch-fused <= 1.3), for all three
optimizers on both lists.

Command:
    python benchmarks/optim_step.py                  # both lists, CPU
    python benchmarks/optim_step.py --device cuda    # on a GPU
    python benchmarks/optim_step.py --quick          # tiny lists: checks the script still runs
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from _common import cpu_model, usable_cores

from gdlab.optim import Optimizer, aliases, inject

BYTES_PER_PARAM = {"adam": 28, "adamw": 28, "sgd-momentum": 20}
LR = 1e-6


def resnet18_shapes() -> list[tuple[int, ...]]:
    """torchvision's ResNet-18 parameter shapes, in order (62 tensors, 11,689,512 parameters)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for block in range(2):
            shapes += [(planes, inplanes, 3, 3), (planes,), (planes,), (planes, planes, 3, 3), (planes,), (planes,)]
            if block == 0 and (stride != 1 or inplanes != planes):
                shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]
            inplanes = planes
    return shapes + [(1000, 512), (1000,)]


def gpt2_shapes(layers: int = 12, width: int = 768, vocab: int = 50257, context: int = 1024) -> list[tuple[int, ...]]:
    """GPT-2 small's parameter shapes (148 tensors, 124,439,808 parameters; the output layer is tied to wte)."""
    shapes: list[tuple[int, ...]] = [(vocab, width), (context, width)]
    for _ in range(layers):
        shapes += [(width,), (width,), (width, 3 * width), (3 * width,), (width, width), (width,),
                   (width,), (width,), (width, 4 * width), (4 * width,), (4 * width, width), (width,)]
    return shapes + [(width,), (width,)]


def make_params(shapes: list[tuple[int, ...]], device: str) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=g).to(device))
        p.grad = torch.randn(shape, generator=g).to(device) * 1e-3
        params.append(p)
    return params


def sides(name: str, params: list[torch.nn.Parameter]) -> dict[str, torch.optim.Optimizer]:
    if name == "sgd-momentum":
        return {"gdlab": Optimizer(params, inject(aliases.sgd, lr=LR, momentum=0.9)),
                "gdlab-plain": Optimizer(params, inject(aliases.sgd, lr=LR, momentum=0.9), fused=False),
                "torch": torch.optim.SGD(params, lr=LR, momentum=0.9),
                "torch-foreach": torch.optim.SGD(params, lr=LR, momentum=0.9, foreach=True),
                "torch-fused": torch.optim.SGD(params, lr=LR, momentum=0.9, fused=True)}
    alias = {"adam": aliases.adam, "adamw": aliases.adamw}[name]
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return {"gdlab": Optimizer(params, inject(alias, lr=LR)),
            "gdlab-plain": Optimizer(params, inject(alias, lr=LR), fused=False),
            "torch": cls(params, lr=LR),
            "torch-foreach": cls(params, lr=LR, foreach=True),
            "torch-fused": cls(params, lr=LR, fused=True)}


def timed(opt: torch.optim.Optimizer, steps: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    sync()
    return (time.perf_counter() - start) / steps


def bandwidth(device: str, sync: Callable[[], None], mib: int = 1024) -> float:
    """Bytes per second of a large copy (read + write), the best of 5."""
    x = torch.ones(mib * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        sync()
        start = time.perf_counter()
        y.copy_(x)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * x.numel() * 4 / best


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the worst ratio gdlab/torch per torch side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lists", default="resnet18,gpt2")
    parser.add_argument("--optimizers", default="adam,adamw,sgd-momentum")
    parser.add_argument("--quick", action="store_true", help="tiny lists, 2 rounds of 1 step")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    lists = {"resnet18": resnet18_shapes, "gpt2": gpt2_shapes}
    if args.quick:
        args.rounds, args.steps = 2, 1
        lists = {"resnet18": lambda: [(s[0],) for s in resnet18_shapes()], "gpt2": lambda: gpt2_shapes(2, 32, 100, 16)}
    device_name = torch.cuda.get_device_name() if cuda else cpu_model()
    print(f"# torch {torch.__version__}, Python {platform.python_version()}, {device_name}, "
          f"{usable_cores()} usable cores, {torch.get_num_threads()} torch threads")
    bw = bandwidth(args.device, sync, 64 if args.quick else 1024)
    print(f"# memory bandwidth (copy): {bw / 1e9:.1f} GB/s")
    columns = ("gdlab", "gdlab-plain", "torch", "torch-foreach", "torch-fused", "floor")
    print(f"{'list':9} {'optimizer':13} {'params':>7} " + " ".join(f"{s:>12}" for s in columns)
          + "   gdlab/torch  gdlab/fused  (ms per step)")
    worst = {"torch": 0.0, "torch-foreach": 0.0, "torch-fused": 0.0}
    for list_name in args.lists.split(","):
        params = make_params(lists[list_name](), args.device)
        count = sum(p.numel() for p in params)
        for opt_name in args.optimizers.split(","):
            opts = sides(opt_name, params)
            for opt in opts.values():
                opt.step()  # warm-up: states are allocated here
            times: dict[str, list[float]] = {k: [] for k in opts}
            names = list(opts)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    times[name].append(timed(opts[name], args.steps, sync))
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            floor = 1e3 * BYTES_PER_PARAM[opt_name] * count / bw
            ratio_default, ratio_fused = ms["gdlab"] / ms["torch"], ms["gdlab"] / ms["torch-fused"]
            worst["torch"] = max(worst["torch"], ratio_default)
            worst["torch-fused"] = max(worst["torch-fused"], ratio_fused)
            worst["torch-foreach"] = max(worst["torch-foreach"], ms["gdlab"] / ms["torch-foreach"])
            print(f"{list_name:9} {opt_name:13} {count / 1e6:6.1f}M " + " ".join(
                f"{ms[k]:12.3f}" for k in ("gdlab", "gdlab-plain", "torch", "torch-foreach", "torch-fused")) +
                f" {floor:12.3f}   {ratio_default:10.2f}x  {ratio_fused:10.2f}x")
            del opts
        del params
    print(f"worst ratio gdlab/torch default: {worst['torch']:.2f} (target <= 1.0); "
          f"gdlab/torch foreach: {worst['torch-foreach']:.2f} (target <= 1.0); "
          f"gdlab/torch fused: {worst['torch-fused']:.2f} (target <= 1.3)")
    return worst


if __name__ == "__main__":
    main()
