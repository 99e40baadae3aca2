"""A rank of tests/test_distributed.py, launched by torchrun: ``python -m torch.distributed.run ... MODE OUT [RUN]``.

Modes: ``fit`` (a run of global batch 64, stored, a diverging one, a sweep and restarts), ``plain`` (the run of
global batch 64 alone), ``kill`` (rank 1 is killed mid-run),
``resume`` (continues the stored run RUN), ``hang`` (rank 1 stops answering). Rank 0 saves what it saw in OUT.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import gdlab  # noqa: E402
from gdlab.instruments import Cheap, Periodic  # noqa: E402
from gdlab.loop import Callback  # noqa: E402

SAMPLES, BATCH, EPOCHS, LR = 200, 64, 3, 0.3


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(SAMPLES, 5, generator=g)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 0.8).long()


def model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


PERIODIC = ("noise_scale", "grad_snr", "zero_share/1", "dead_share/1", "saturated/1", "grad_out/0", "grad_out/2")


def relu() -> dict[str, list[float]]:
    """A ReLU net with some units dead for most samples, measured every 3 steps at global batch 45 (slices of 23
    and 22 on 2 ranks): its periodic columns."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        net[0].bias[:8] = -torch.linspace(0.6, 2.0, 8)
    result = gdlab.fit(net, data(), epochs=2, batch_size=45, lr=0.1, progress=False, doctor=False,
                       instruments=[Cheap(), Periodic(every=3, budget=math.inf)])
    return periodic(result)


def partial() -> dict[str, list[float]]:
    """The run of global batch 64 measured once (step 1) on a sub-batch of 16: 8 samples of each rank's slice."""
    result = gdlab.fit(model(), data(), steps=2, batch_size=BATCH, lr=LR, progress=False, doctor=False,
                       instruments=[Cheap(), Periodic(every=50, sub_batch=16, budget=math.inf)])
    return periodic(result)


def periodic(result: gdlab.Result) -> dict[str, list[float]]:
    columns = result.history.steps.columns
    return {key: list(columns[key]) for key in PERIODIC if key in columns}


def auto(workers: int = 1) -> dict[str, object]:
    """``lr="auto"`` (its 18 learning rates spread over ``workers`` ranks, under torchrun) and a population cut by
    successive halving: the choice and the members' records."""
    chosen = gdlab.fit(model(), data(), lr="auto", steps=20, batch_size=BATCH, progress=False, doctor=False,
                       instruments="none")
    cut = gdlab.population.train(model, data(), seeds=[0, 1, 2, 3, 4], hyper={"lr": [0.01, 0.03, 0.1, 0.3, 1.0]},
                                 steps=12, batch_size=BATCH, halving=[(3, 3), (6, 1)], progress=False,
                                 workers=workers)
    assert chosen.lr_selection is not None
    return {"lr": chosen.lr, "tried": chosen.lr_selection.tried, "cost": chosen.lr_selection.cost,
            "pruned_at": cut.pruned_at, "train_loss": cut.train_loss, "losses": cut.losses}


def diverging() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(128, 4, generator=g) * 10
    torch.manual_seed(2)
    return torch.nn.Linear(4, 1), (X, X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))


class At(Callback):
    """On rank 1, at ``step``: kill the process (``kill``) or stop answering (``hang``)."""

    def __init__(self, what: str, step: int) -> None:
        self.what, self.step = what, step

    def on_step_end(self, state: object) -> None:
        if os.environ["RANK"] == "1" and state.step == self.step:  # type: ignore[attr-defined]
            if self.what == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.what == "interrupt":  # as Ctrl-C reaching rank 1 alone
                state.interrupted = True  # type: ignore[attr-defined]
            else:
                time.sleep(120)


def main(mode: str, out: Path, run: str | None = None) -> None:
    rank = int(os.environ["RANK"])
    store = out / "store"
    common = dict(batch_size=BATCH, lr=LR, optimizer="momentum", progress=False, store=store, checkpoint_every=4)
    if mode == "fit":
        net = model()
        result = gdlab.fit(net, data(), epochs=EPOCHS, **common)
        net2, pair = diverging()
        bad = gdlab.fit(net2, pair, batch_size=32, lr=0.5, optimizer="sgd", epochs=3, progress=False)
        net3, pair = diverging()
        cured = gdlab.fit(net3, pair, batch_size=32, lr=0.5, optimizer="sgd", epochs=3, progress=False,
                          remedy="auto", log_every=5)
        spread = gdlab.sweep(model, data(), lr=[0.03, 0.3, 3.0], seeds=[0, 1], steps=8, batch_size=BATCH,
                             progress=False, workers=2, store=store)
        starts = gdlab.restarts(model, data(), seeds=5, lr=0.3, steps=8, batch_size=BATCH, progress=False, workers=2)
        stopped = gdlab.fit(model(), data(), steps=40, batch_size=16, lr=0.1, progress=False, log_every=5,
                            callbacks=[At("interrupt", 7)])
        saved = {"params": net.state_dict(), "final": result.final, "plan": result.plan.describe(),
                 "stopped": (stopped.status, stopped.stop_reason, stopped.steps),
                 "sweep": spread.table, "sweep_id": spread.sweep_id, "restarts": starts.summary(),
                 "run_id": result.run_id, "codes": [f.code for f in bad.findings], "stop": bad.stop_reason,
                 "losses": result.history.steps["loss"], "remedies": [(r.step, r.action) for r in cured.remedies],
                 "cured": net3.state_dict(), "cured_lr": cured.lr, "periodic": periodic(result),
                 "relu": relu(), "auto": auto(workers=2), "partial": partial()}
    elif mode == "plain":  # one run, unstored
        net = model()
        result = gdlab.fit(net, data(), epochs=EPOCHS, **{**common, "store": None})
        saved = {"params": net.state_dict(), "plan": result.plan.describe()}
    elif mode in ("kill", "hang"):
        net = model()
        gdlab.fit(net, data(), epochs=EPOCHS, callbacks=[At(mode, 6)], **common)
        saved = {}
    else:
        net = model()
        result = gdlab.fit(net, data(), epochs=EPOCHS, resume=run, **common)
        saved = {"params": net.state_dict(), "run_id": result.run_id, "steps": result.steps}
    torch.save(saved, out / f"rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # end together (a process that exits while gloo still talks to it aborts its peer)
    # and leave without the interpreter's teardown: gloo's threads sometimes abort a process there ("terminate
    # called without an active exception", after the run; as in test_watch_ddp); what the test reads is written
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
