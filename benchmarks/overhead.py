"""The overhead of gdlab's fit loop over a hand-written loop doing the same work: bare, and with its defaults.

What is measured: the wall time of one epoch of ``gdlab.fit(model, (X, y), optimizer="sgd", lr=0.01,
batch_size=128, progress=True)`` in three settings against a hand-written loop that batches by index exactly as
gdlab does: per epoch a permutation from ``torch.randperm`` with a seeded ``torch.Generator``, batches
``X.index_select(0, idx)`` of consecutive slices of it, ``torch.optim.SGD(lr=0.01)``, cross-entropy,
``loss.item()`` per step (as such loops are written), ``zero_grad``/``backward``/``step``. Model: MLP 784-256-10
(ReLU); data: N in-memory synthetic samples (random float32 X [N, 784], int64 labels in 0..9, fixed seed;
N = 60,000 by default).

The gdlab sides:
- ``bare``: ``instruments="none", doctor=False`` (target: at most 1.05x the hand loop);
- ``bare+torch``: the same with a ``torch.optim.SGD`` passed in (the loop alone, gdlab's optimizer aside);
- ``defaults``: gdlab's instruments and doctor as they come (target: at most 1.15x).

The same work on every side: same model and initial parameters (``torch.manual_seed`` before building it, outside
the timed region), same data, same number of steps (ceil(N / 128) per epoch), batch size 128, SGD with momentum 0,
float32, the same ``torch.set_num_threads`` (default 2), the same device. gdlab's bar is on; stderr is sent to an
in-memory, non-terminal stream during the timed runs, unless ``--bar-to-stderr``.

How: one warm-up run of each side, then ``--repeats`` rounds of all sides alternated (the side that goes first
rotates); each gdlab side's time is divided by the hand loop's of the same round and reported as the median with
min and max. It also counts the host syncs per step of each side (``Tensor.item``, ``tolist``, ``__float__``,
``__int__``, ``__bool__`` called from Python, one counted run each). On a GPU (``--device cuda``) it synchronises
before reading the clock.

The setup table (``--setup`` prints it alone): each fixed step of ``fit`` timed where ``fit`` calls it (the
function is wrapped in every gdlab module that holds it, so the table follows the code as it moves), in ms per
fit, the median of ``--setup-runs`` warm fits for each of three settings: bare, defaults, and defaults with a
store (a temporary folder: the run created, checkpointed and closed). Nested steps are indented under the one
that calls them; "calls" counts them per fit. Under "the loop" the steps of the epoch themselves.

``--clock cpu`` times by the process's CPU time (``time.process_time``) instead of the wall clock: with
``--threads 1`` it is the work done, which other processes on a loaded machine hardly touch.

Command:
    python benchmarks/overhead.py                   # full size (60,000 samples, batch 128, 1 epoch per run)
    python benchmarks/overhead.py --setup           # the setup table alone
    python benchmarks/overhead.py --threads 1 --clock cpu    # on a loaded machine
    python benchmarks/overhead.py --device cuda --batch 1024
    python benchmarks/overhead.py --quick           # a tiny size, a few seconds: checks the script still runs
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from _common import cpu_model, make_data, make_mlp, usable_cores
from torch import nn

import gdlab

TARGETS = {"bare": 1.05, "defaults": 1.15}
CLASSES = 10
SYNCING = ("item", "tolist", "__float__", "__int__", "__bool__")
CLOCK = time.perf_counter  # --clock cpu: time.process_time

SETUP = (  # (depth, label, module, attribute): the steps of one fit, where fit calls them
    (0, "settings checked", "gdlab.config", "check_settings"),
    (0, "instruments chosen", "gdlab.instruments", "attach"),
    (0, "problem made", "gdlab.problem", "Problem.make"),
    (1, "module check (memory)", "gdlab.problem", "check_module"),
    (1, "sources (data to the device)", "gdlab.data.source", "Source.__init__"),
    (1, "data check (non-finite, classes)", "gdlab.problem", "check_data"),
    (1, "model check (probe forward)", "gdlab.problem", "check_model"),
    (0, "threads chosen", "gdlab.threads", "use"),
    (0, "optimizer made", "gdlab.optim", "make"),
    (0, "loop state (start point)", "gdlab.loop", "LoopState.start"),
    (0, "doctor meta: activations traced", "gdlab.doctor.findings", "trace_activations"),
    (0, "doctor meta: run settings", "gdlab.doctor.findings", "run_settings"),
    (0, "doctor meta: input scales", "gdlab.records.stats", "input_scales"),
    (0, "store: run created", "gdlab.store", "Store.create_run"),
    (0, "the loop", "gdlab.loop", "run"),
    (1, "cheap instrument attached", "gdlab.instruments.movement", "Cheap.on_fit_start"),
    (1, "periodic instrument attached", "gdlab.instruments.periodic", "Periodic.on_fit_start"),
    (1, "doctor started", "gdlab.doctor.remedies", "Doctor.on_fit_start"),
    (1, "progress bar started", "gdlab.progress", "ProgressBar.on_fit_start"),
    (1, "host reads (loss, norms)", "gdlab.loop", "StepLog.fetch"),
    (1, "validation", "gdlab.problem", "evaluate"),
    (1, "store: rows flushed", "gdlab.callbacks", "Recorder.flush"),
    (1, "store: checkpoint", "gdlab.callbacks", "Recorder.checkpoint"),
    (1, "cheap instrument closed", "gdlab.instruments.movement", "Cheap.on_fit_end"),
    (1, "doctor: detectors", "gdlab.doctor.remedies", "Doctor.on_fit_end"),
    (1, "progress bar closed", "gdlab.progress", "ProgressBar.on_fit_end"),
    (0, "final metrics", "gdlab.loop", "final_metrics"),
    (0, "findings told (explain)", "gdlab.doctor.story", "explain"),
    (0, "store: run finished", "gdlab.callbacks", "Recorder.finish"),
)


@contextlib.contextmanager
def timing_setup() -> Iterator[dict[str, list[float]]]:
    """Each step of :data:`SETUP` wrapped, in every gdlab module that holds it, to add its time (ms) and calls to
    ``spent[label] = [ms, calls]``; put back afterwards. A step the code no longer has is left out."""
    spent: dict[str, list[float]] = {}
    undo: list[tuple[Any, str, Any]] = []
    for _, label, module_name, attribute in SETUP:
        try:
            owner: Any = importlib.import_module(module_name)
            *path, name = attribute.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        except (ImportError, AttributeError, KeyError):
            continue
        spent[label] = [0.0, 0]
        wrapped = _timed(original, spent[label])
        held = [(owner, name)] if isinstance(owner, type) else \
            [(m, key) for m in _gdlab_modules() for key, value in list(vars(m).items()) if value is original]
        for holder, key in held:  # under any name it was imported as (``use as use_threads``)
            undo.append((holder, key, original))
            setattr(holder, key, wrapped)
    try:
        yield spent
    finally:
        for holder, name, original in reversed(undo):
            setattr(holder, name, original)


def _gdlab_modules() -> list[Any]:
    return [m for key, m in list(sys.modules.items()) if key.split(".")[0] == "gdlab" and m is not None]


def _timed(original: Any, into: list[float]) -> Any:
    function = original.__func__ if isinstance(original, classmethod) else original

    def call(*args: Any, **kwargs: Any) -> Any:
        start = CLOCK()
        try:
            return function(*args, **kwargs)
        finally:
            into[0] += 1e3 * (CLOCK() - start)
            into[1] += 1

    return classmethod(call) if isinstance(original, classmethod) else call


def setup_table(X: torch.Tensor, y: torch.Tensor, model: Callable[[], nn.Module], args: argparse.Namespace) -> None:
    """Print the fixed steps of one fit with their times (ms per fit, the median of ``args.setup_runs`` warm fits)
    for bare, defaults and defaults with a store."""
    import gdlab.train  # every module fit calls is loaded before its steps are wrapped

    settings = {"bare": {"instruments": "none", "doctor": False}, "defaults": {}, "store": {"store": True}}
    tables: dict[str, dict[str, list[float]]] = {}
    totals: dict[str, float] = {}
    sink = contextlib.nullcontext() if args.bar_to_stderr else contextlib.redirect_stderr(io.StringIO())
    for side, extra in settings.items():
        runs: list[dict[str, list[float]]] = []
        whole: list[float] = []
        for i in range(args.setup_runs + 1):  # the first warms up
            with tempfile.TemporaryDirectory() as folder, sink, timing_setup() as spent:
                kwargs = {**extra, "store": folder} if extra.get("store") else extra
                start = CLOCK()
                gdlab.fit(model(), (X, y), optimizer="sgd", lr=0.01, batch_size=args.batch, epochs=args.epochs,
                          seed=args.seed, device=X.device, threads=torch.get_num_threads(), progress=True, **kwargs)
                _sync(X.device)
                if i:
                    whole.append(1e3 * (CLOCK() - start))
                    runs.append(spent)
        tables[side] = {label: [statistics.median(r[label][0] for r in runs), runs[0][label][1]] for label in runs[0]}
        totals[side] = statistics.median(whole)
    print()
    print(f"setup: the fixed steps of one fit, ms per fit ({args.clock} clock, median of {args.setup_runs} warm fits); "
          "calls per fit")
    print(f"  {'step':<40}" + "".join(f"{side:>16}" for side in settings))
    for depth, label, *_ in SETUP:
        if not any(label in t for t in tables.values()):
            continue
        cells = "".join(f"{tables[s][label][0]:>9.1f} ({tables[s][label][1]:>4.0f})" if tables[s].get(label, [0, 0])[1]
                        else f"{'-':>16}" for s in settings)
        print(f"  {'  ' * depth + label:<40}{cells}")
    print(f"  {'the whole fit':<40}" + "".join(f"{totals[s]:>9.1f}{'':7}" for s in settings))


def gdlab_side(**settings: Any) -> Callable[..., float]:
    """A side running ``gdlab.fit`` with ``settings`` (``torch_sgd=True``: a torch.optim.SGD passed in)."""
    torch_sgd = settings.pop("torch_sgd", False)

    def side(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, batch: int) -> float:
        optimizer: Any = torch.optim.SGD(model.parameters(), lr=0.01) if torch_sgd else "sgd"
        _sync(X.device)
        start = CLOCK()
        gdlab.fit(model, (X, y), optimizer=optimizer, lr=0.01, batch_size=batch, epochs=epochs, seed=seed,
                  device=X.device, threads=torch.get_num_threads(), **{"progress": True, **settings})
        _sync(X.device)
        return CLOCK() - start

    return side


def hand(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, batch: int) -> float:
    """The loop everyone writes, batching by index as gdlab does."""
    _sync(X.device)
    start = CLOCK()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    n = len(X)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).to(X.device)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            xb, yb = X.index_select(0, idx), y.index_select(0, idx)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    _sync(X.device)
    return CLOCK() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def counting_syncs() -> Iterator[dict[str, int]]:
    """Count the Python calls that make the host wait for a tensor's value."""
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def counted(original: Any) -> Any:
        def call(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts["n"] += 1
            return original(self, *args, **kwargs)
        return call

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio side/hand per gdlab side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000, help="training samples (default 60000)")
    parser.add_argument("--repeats", type=int, default=31, help="alternated rounds (default 31)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run (default 1)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden units of the MLP (default 256)")
    parser.add_argument("--features", type=int, default=784, help="input features (default 784)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every side (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial parameters")
    parser.add_argument("--bar-to-stderr", action="store_true",
                        help="leave stderr alone: the bar draws on it (a terminal costs more than a redirect)")
    parser.add_argument("--quick", action="store_true", help="a tiny size (2,000 samples, 3 rounds): a few seconds")
    parser.add_argument("--setup", action="store_true", help="only the table of fit's fixed steps and their times")
    parser.add_argument("--setup-runs", type=int, default=5, help="warm fits per setting in the setup table (5)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall (default), or cpu: the process's CPU time (with --threads 1: on a loaded machine)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats, args.setup_runs = 2_000, 3, 1
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = -(-args.samples // args.batch) * args.epochs
    print("overhead: gdlab.fit (progress bar on) vs a hand-written index-batching loop")
    print(f"torch {torch.__version__}, gdlab {gdlab.__version__}, Python {platform.python_version()}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_model()}, {usable_cores()} cores usable, torch threads {torch.get_num_threads()}"
    print(f"device: {where}")
    print(f"MLP {args.features}-{args.hidden}-{CLASSES} (ReLU), {args.samples} samples float32, batch {args.batch}, "
          f"{args.epochs} epoch(s) = {steps} steps per run, SGD lr 0.01, cross-entropy, seed {args.seed}")
    print(f"progress bar on, drawn to {'stderr' if args.bar_to_stderr else 'an in-memory non-terminal stream'}")
    print(f"clock: {'CPU time of the process' if args.clock == 'cpu' else 'wall'}")
    print("ratio = gdlab time / hand time per round: median (min, max); 1.00 means no overhead")
    sys.stdout.flush()

    X, y = make_data(args.samples, args.features, CLASSES, args.seed)
    X, y = X.to(device), y.to(device)

    def model() -> nn.Module:  # same initial parameters, made outside the timed region
        return make_mlp(args.seed, args.features, args.hidden, CLASSES).to(device)

    if args.setup:
        setup_table(X, y, model, args)
        return {}
    sides: dict[str, Callable[..., float]] = {
        "hand": hand,
        "bare": gdlab_side(instruments="none", doctor=False),
        "bare+torch": gdlab_side(instruments="none", doctor=False, torch_sgd=True),
        "defaults": gdlab_side(),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    syncs: dict[str, float] = {}
    sink = contextlib.nullcontext() if args.bar_to_stderr else contextlib.redirect_stderr(io.StringIO())
    with sink:
        for name, fn in sides.items():  # warm-up of each side, counting its host syncs
            with counting_syncs() as counts:
                fn(model(), X, y, args.epochs, args.seed, args.batch)
            syncs[name] = counts["n"] / steps
        names = list(sides)
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[: i % len(names)]:  # each side goes first in turn
                times[name].append(sides[name](model(), X, y, args.epochs, args.seed, args.batch))

    print()
    print(f"{args.repeats} rounds")
    print(f"  {'side':<12}{'median s/run':>14}{'us/step':>10}{'syncs/step':>12}")
    for name in sides:
        med = statistics.median(times[name])
        print(f"  {name:<12}{med:>14.3f}{med / steps * 1e6:>10.0f}{syncs[name]:>12.3f}")
    print()
    medians: dict[str, float] = {}
    for name in ("bare+torch", "bare", "defaults"):
        ratios = [g / h for g, h in zip(times[name], times["hand"])]
        med = medians[f"{name}/hand"] = statistics.median(ratios)
        target = TARGETS.get(name)
        verdict = "" if target is None else f"; {'meets' if med <= target else 'misses'} the target <= {target:.2f}x"
        print(f"ratio {name}/hand: {med:.3f}x (min {min(ratios):.3f}, max {max(ratios):.3f}{verdict})")
    setup_table(X, y, model, args)
    return medians


if __name__ == "__main__":
    main()
