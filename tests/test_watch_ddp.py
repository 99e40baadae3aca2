"""gdlab.watch in a hand-written data-parallel loop (``torchrun --nproc-per-node 2`` on CPU, gloo, the model in
``DistributedDataParallel``): rank zero watches, records and diagnoses; the other rank follows its decisions.

The runs are this file run as a script by ``python -m torch.distributed.run`` in a subprocess with a hard timeout;
every rank writes what it saw (``rank<r>.json``) and the test compares the ranks.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gdlab
from gdlab import distributed
from gdlab.errors import InvalidParameter
from multiproc import readings, run_bounded, store_runs

pytestmark = pytest.mark.slow  # every test launches two processes (seconds each); .ci/run runs them
TIMEOUT = 180  # seconds for one two-process run (about 10-20 s on two busy cores); a hang fails the test
HERE = Path(__file__).resolve()
SRC = HERE.parents[1] / "src"


def run(out: Path, *, lr: float, epochs: int = 3, remedy: str = "suggest", instruments: str = "cheap",
        relu: bool = False, fault: str = "") -> None:
    """One rank of the loop: each rank takes its half of every global batch of 32 moons. ``fault``: ``rank_edit``
    (rank 1 changes a weight after the wrapper copied rank 0's: outside the all-reduce), ``moved`` (the model
    moved after wrapping, here to float64 and back, which reallocates its parameters as a move to the CPU and back
    does: pytorch#104336, its gradients no longer averaged)."""
    from sklearn.datasets import make_moons

    torch.set_num_threads(1)
    distributed.setup()  # gloo, with gdlab's timeout; taken down at exit
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    X_np, y_np = make_moons(512, noise=0.1, random_state=0)
    X, y = torch.tensor(X_np, dtype=torch.float32), torch.tensor(y_np)
    torch.manual_seed(0)
    hidden = nn.ReLU() if relu else nn.Tanh()
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(2, 16), hidden, nn.Linear(16, 2)))
    if fault == "rank_edit" and rank == 1:
        with torch.no_grad():
            model.module[2].weight.mul_(1.01)
    elif fault == "moved":
        model.to(torch.float64).to(torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    try:  # a rollback would change rank zero's model alone
        gdlab.watch(model, optimizer, remedy="auto", rollback=True)
        refused = ""
    except InvalidParameter as error:
        refused = str(error)
    doctor = gdlab.watch(model, optimizer, instruments=instruments, remedy=remedy, store=out / "runs",
                         name="ddp", log_every=20)
    norms: list[float] = []
    steps = 0
    for _ in range(epochs):
        for i in range(rank * 16, len(y), world * 16):
            loss = F.cross_entropy(model(X[i:i + 16]), y[i:i + 16])
            optimizer.zero_grad()
            loss.backward()
            norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))))
            optimizer.step()
            doctor.step(loss)
            steps += 1
            if doctor.stop_reason:
                break
        if doctor.stop_reason:
            break
        doctor.epoch_end()
    report = doctor.close()
    seen = {"rank": rank, "steps": steps, "refused": refused, "norms": norms, "stop_reason": report.stop_reason,
            "report_steps": report.steps, "rows": len(report.history.steps), "run_id": report.run_id,
            "findings": sorted(f.code for f in report.findings), "lr": optimizer.param_groups[0]["lr"],
            "remedies": [r.action for r in report.remedies],
            "replicas": next((f.evidence for f in report.findings if f.code == "replicas_out_of_step"), None),
            "causes": [c.code for c in report.diagnosis.causes] if report.diagnosis is not None else [],
            "param_sum": float(sum(p.detach().double().sum() for p in model.parameters()))}
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    torch.distributed.barrier()  # end together (a process that exits while gloo still talks to it aborts its peer)
    # and leave without the interpreter's teardown: on this torch, gloo's threads sometimes abort a process there
    # ("terminate called without an active exception", after the run, once in a CI run of this file), whatever
    # the order the process group and DDP are taken down in; what the test checks is written by now
    os._exit(0)


def _launch(tmp_path: Path, **options: Any) -> dict[int, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(HERE), str(tmp_path), json.dumps(options)]
    code, stdout, stderr = run_bounded(command, env, tmp_path, TIMEOUT)
    assert code == 0, stdout[-3000:] + stderr[-5000:]
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}


def test_rank_zero_watches_and_every_rank_gets_its_findings(tmp_path: Path) -> None:
    seen = _launch(tmp_path, lr=1e-5)
    zero, one = seen[0], seen[1]
    assert zero["steps"] == one["steps"] == 3 * 16
    assert all(s["refused"].startswith("invalid rollback True") and "one process" in s["refused"] for s in (zero, one))
    assert {"lr_too_low", "not_learning"} <= set(zero["findings"]), zero["findings"]
    assert one["findings"] == zero["findings"] and one["report_steps"] == zero["report_steps"] == 48
    assert zero["rows"] == 48 and one["rows"] == 0  # rank zero's history is the record
    runs = store_runs(tmp_path / "runs")
    assert len(runs) == 1 and runs[0][0].id == zero["run_id"] and one["run_id"] is None  # one run stored
    # the norms read are those every rank stepped with: after DDP's all-reduce
    assert zero["norms"] == one["norms"]
    stored, expected = readings(list(runs[0][1].steps["grad_norm"]), zero["norms"])
    assert stored == expected or all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(stored, expected))


def test_a_divergence_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    """An absurd learning rate: rank zero's read finds the non-finite loss, and its verdict reaches the other rank
    at the next agreement (every 20 calls here, and at each epoch_end()), so both loops break at the same step
    (else one would wait for the other in DDP's next all-reduce until the timeout)."""
    seen = _launch(tmp_path, lr=1e8, epochs=4, relu=True)
    zero, one = seen[0], seen[1]
    assert (zero["stop_reason"] or "").startswith("diverged") and one["stop_reason"] == zero["stop_reason"]
    assert zero["steps"] == one["steps"] < 4 * 16
    assert "non_finite" in zero["findings"] and one["findings"] == zero["findings"]


def test_auto_remedies_reach_every_rank(tmp_path: Path) -> None:
    """remedy="auto" raises a learning rate that is far too small: the ranks agree at every step, so the other
    rank steps with rank zero's learning rate and the replicas stay identical."""
    seen = _launch(tmp_path, lr=1e-4, epochs=4, remedy="auto")
    zero, one = seen[0], seen[1]
    assert "set_lr" in zero["remedies"] and zero["lr"] > 1e-4, zero
    assert one["lr"] == zero["lr"] and one["remedies"] == zero["remedies"]
    assert one["param_sum"] == zero["param_sum"]


@pytest.mark.parametrize("fault", ["rank_edit", "moved", ""])
def test_replicas_out_of_step_are_named_with_the_first_rank_and_parameter_that_differ(tmp_path: Path,
                                                                                       fault: str) -> None:
    """One rank's weights changed outside the all-reduce, and a model moved after wrapping (its gradients no
    longer averaged, pytorch#104336): the fingerprints compared at the first agreement (the first epoch's end, at
    16 steps) differ, and rank zero's report names rank 1 and the first parameter that differs as the root cause,
    with its fix, on every rank; the healthy twin (the same loop) is quiet."""
    seen = _launch(tmp_path, lr=0.1, epochs=2, fault=fault)
    zero, one = seen[0], seen[1]
    assert one["findings"] == zero["findings"] and zero["steps"] == one["steps"] == 32
    if not fault:
        assert "replicas_out_of_step" not in zero["findings"] and zero["param_sum"] == one["param_sum"]
        return
    found = zero["replicas"]
    assert found is not None and found["rank"] == 1 and found["step"] == 16, found
    assert found["parameter"] == ("2.weight" if fault == "rank_edit" else "0.weight"), found
    assert "replicas_out_of_step" in zero["causes"] and zero["param_sum"] != one["param_sum"]


if __name__ == "__main__":
    run(Path(sys.argv[1]), **json.loads(sys.argv[2]))
