"""Data-parallel fit on N ranks against fit in one process, on the same global work.

What is measured: the wall time of ``gdlab.fit(model, (X, y), optimizer="sgd", lr=0.01, batch_size=B,
epochs=1, instruments="none", doctor=False, progress=False)`` (``B`` the global batch) in one process, and the same
call in each of N ranks launched together (gloo on the CPU, NCCL on CUDA; each rank takes its slice of every global
batch, DistributedDataParallel averages the gradients, the loss is averaged over the ranks). The time is taken inside
the processes around the timed ``fit`` (after one warm-up ``fit`` in the same process): start-up and the launch are
left out, so the ratio is the cost of the machinery per step (on a CPU machine whose cores the ranks share, no
speed-up is expected). Same model (MLP FEATURES-HIDDEN-10, ReLU, ``torch.manual_seed(0)``), same data (random float32
inputs, int64 labels, fixed seed), same global batch and steps, ``torch.set_num_threads(--threads)`` in every process.

How: ``--repeats`` rounds; each round launches the one-process side and the N-rank side (torch.multiprocessing,
127.0.0.1 and a free port), the side going first alternating; the ratio N ranks / 1 process is taken per round and
reported as the median with min and max. With ``--ranks 1,2,4,8`` on a machine with that many GPUs
(``--device cuda``: rank r on cuda:r), each count against one process.

Command:
    python benchmarks/distributed.py                 # 2 ranks vs 1 on the CPU (gloo)
    python benchmarks/distributed.py --device cuda --ranks 2,4,8 --samples 262144 --batch 1024
    python benchmarks/distributed.py --quick         # a tiny size: checks the script still runs
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import time
from typing import Any

import torch
import torch.multiprocessing as mp
from _common import cpu_model, make_data, make_mlp, usable_cores


def _timed_fit(args: argparse.Namespace) -> float:
    import gdlab

    torch.set_num_threads(args.threads)
    X, y = make_data(args.samples, args.features, 10, seed=1)
    device = args.device if args.device != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    kwargs: dict[str, Any] = dict(optimizer="sgd", lr=0.01, batch_size=args.batch, epochs=1, instruments="none",
                                  doctor=False, progress=False, device=device, threads=args.threads)
    gdlab.fit(make_mlp(0, args.features, args.hidden, 10), (X, y), **kwargs)  # warm-up
    model = make_mlp(0, args.features, args.hidden, 10)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    gdlab.fit(model, (X, y), **kwargs)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    seconds = _timed_fit(args)
    if rank == 0:
        out.put(seconds)
    # take the group down here, every rank together: a process leaving with gloo's threads alive may abort
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # then leave without the interpreter's teardown, where a thread of gloo's still joinable aborts the process
    # ("terminate called without an active exception", seen once in CI under load); the figure is in the pipe
    # already (a SimpleQueue writes at put())
    os._exit(0)


def _alone(args: argparse.Namespace, out: Any) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    out.put(_timed_fit(args))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _side(ranks: int, args: argparse.Namespace) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    if ranks == 1:
        process = ctx.Process(target=_alone, args=(args, out))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"the one-process side failed (exit code {process.exitcode})")
    else:
        mp.start_processes(_rank, args=(ranks, _free_port(), args, out), nprocs=ranks, start_method="spawn")
    return float(out.get())


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark with command-line ``argv``; returns the median ratio ``N ranks / 1 process`` per N."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="2", help="rank counts to compare with one process (default 2)")
    parser.add_argument("--samples", type=int, default=32_768, help="training samples (default 32768)")
    parser.add_argument("--features", type=int, default=784, help="input features (default 784)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden units (default 256)")
    parser.add_argument("--batch", type=int, default=256, help="global batch (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="alternated rounds (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (one GPU per rank)")
    parser.add_argument("--quick", action="store_true", help="a tiny size, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.features, args.hidden, args.batch, args.repeats = 1024, 32, 32, 64, 1
    counts = [int(c) for c in args.ranks.split(",")]
    steps = -(-args.samples // args.batch)
    print(f"machine: {cpu_model()}, {usable_cores()} usable cores; torch {torch.__version__}; python "
          f"{platform.python_version()}; device {args.device}")
    print(f"work: MLP {args.features}-{args.hidden}-10, {args.samples} samples, global batch {args.batch}, "
          f"{steps} steps (1 epoch), {args.threads} thread(s) per process, {args.repeats} rounds")
    print(f"{'ranks':>6} {'1 process s':>12} {'N ranks s':>10} {'ratio N/1 (min, max)':>24}")
    medians: dict[str, float] = {}
    for n in counts:
        ratios, ones, many = [], [], []
        for r in range(args.repeats):
            order = (1, n) if r % 2 == 0 else (n, 1)
            seconds = {side: _side(side, args) for side in order}
            ones.append(seconds[1])
            many.append(seconds[n])
            ratios.append(seconds[n] / seconds[1])
        medians[f"{n} ranks / 1 process"] = statistics.median(ratios)
        print(f"{n:>6} {statistics.median(ones):>12.3f} {statistics.median(many):>10.3f} "
              f"{statistics.median(ratios):>10.2f}x ({min(ratios):.2f}, {max(ratios):.2f})")
    print(f"ratio {counts[-1]} ranks / 1 process: {statistics.median(ratios):.2f}x")
    sys.stdout.flush()
    return medians


if __name__ == "__main__":
    main()
