"""Data-parallel training (gdlab.distributed): the split of a global batch, and real ranks on the CPU with gloo,
launched by torchrun (each launch a few seconds; every one under a hard timeout, so nothing can hang the suite)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import gdlab
from gdlab.data import BatchPlan, batches
from gdlab.errors import InvalidParameter
from gdlab.store import Store

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
import distributed_worker as worker  # noqa: E402

LIMIT = 120  # seconds: a launch that takes longer has hung


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.getcwd()]), **extra}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_ERROR_FILE"):
        env.pop(key, None)
    return env


def _torchrun(*args: str, nproc: int = 2, env: dict[str, str] | None = None,
              launch: tuple[str, ...] = ("--standalone",)) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *launch, "--nproc-per-node", str(nproc),
                           str(HERE / "distributed_worker.py"), *args], env=env or _env(), capture_output=True,
                          text=True, timeout=LIMIT)


def _gdlab(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gdlab.cli", *args], env=env or _env(), capture_output=True,
                          text=True, timeout=LIMIT, cwd=cwd)


def _single() -> tuple[dict[str, torch.Tensor], Any]:
    """The same run in one process, batch 64."""
    torch.set_num_threads(1)
    net = worker.model()
    result = gdlab.fit(net, worker.data(), epochs=worker.EPOCHS, batch_size=worker.BATCH, lr=worker.LR,
                       optimizer="momentum", progress=False)
    return net.state_dict(), result


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not isinstance(v, float) or k in ("lr", "momentum")}


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)  # float32 tolerance


# -- the split, in one process ----------------------------------------------------------------------------------

def test_plan_states_what_each_rank_gets() -> None:
    plan = BatchPlan.make(1438, 64, ranks=2, rank=0)
    assert plan.describe() == "1438 samples, global batch 64 = 2 ranks x 32 -> 23 iterations per epoch (last batch 30)"
    assert BatchPlan.make(100, 15, ranks=2).describe() == \
        "100 samples, global batch 15 = 2 ranks x 7-8 -> 7 iterations per epoch (last batch 10)"
    assert plan.to_dict()["ranks"] == 2 and "ranks" not in BatchPlan.make(1438, 64).to_dict()


@pytest.mark.parametrize("size,ranks", [(64, 2), (15, 2), (10, 3), ("full", 2)])
def test_ranks_slices_make_up_the_global_batch(size: Any, ranks: int) -> None:
    whole = BatchPlan.make(100, size)
    plans = [BatchPlan.make(100, size, ranks=ranks, rank=r) for r in range(ranks)]
    for epoch in range(2):  # each epoch's order from (seed, epoch), cut into the same global batches
        for i, expected in enumerate(batches(whole, 7, epoch)):
            parts = [list(batches(p, 7, epoch))[i] for p in plans]
            assert torch.equal(torch.cat(parts), expected)
            assert [len(p) for p in parts] == [plans[r].share(i)[0] for r in range(ranks)]
            assert plans[0].share(i)[1] == len(expected)


@pytest.mark.parametrize("samples,size,kwargs,message", [
    (100, "stochastic", {}, "stochastic descent takes one sample per step, which cannot be split over ranks"),
    (100, 2, {}, "invalid batch_size 2: expected at least 3 samples per batch, one for each of the 3 ranks"),
    (100, 49, {}, "(each epoch of 100 samples ends with a batch of 2); give another batch size, or drop_last"),
])
def test_more_ranks_than_samples_in_a_batch(samples: int, size: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameter) as error:
        BatchPlan.make(samples, size, ranks=3, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)
    BatchPlan.make(100, 49, ranks=3, drop_last=True)  # the short batch dropped: fine


def test_one_process_is_not_distributed() -> None:
    from gdlab import distributed

    assert distributed.current() is None and distributed.is_main()
    assert not torch.distributed.is_initialized()


# -- real ranks ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    """Global batch 64 over 2 ranks ends with the parameters of 1 process at batch 64 (same data order); only rank
    0 stores; the doctor names a divergence under 2 ranks as in one process."""
    done = _torchrun("fit", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    params, result = _single()
    for saved in ranks:
        _close(saved["params"], params)
        assert saved["run_id"] == ranks[0]["run_id"]
        assert saved["losses"] == pytest.approx(result.history.steps["loss"], rel=1e-5)
    assert ranks[0]["plan"] == "200 samples, global batch 64 = 2 ranks x 32 -> 4 iterations per epoch (last batch 8)"
    assert ranks[0]["final"]["train_loss"] == pytest.approx(result.final["train_loss"], rel=1e-5)
    runs = Store(tmp_path / "store").runs()
    assert [r.id for r in runs] == [ranks[0]["run_id"]] and runs[0].status == "finished"
    assert runs[0].plan["ranks"] == 2
    # the noise statistics and activation shares pooled over the ranks: one process's at the global batch
    _same_periodic([saved["periodic"] for saved in ranks], worker.periodic(result), measured=1)
    _same_periodic([saved["relu"] for saved in ranks], worker.relu(), measured=4)
    _partial_noise([saved["partial"] for saved in ranks])
    # lr="auto" spread over the ranks, cut by successive halving together: one process's choice
    alone = worker.auto()
    for saved in ranks:
        assert saved["auto"]["lr"] == alone["lr"] and saved["auto"]["pruned_at"] == alone["pruned_at"]
        assert [t["steps"] for t in saved["auto"]["tried"]] == [t["steps"] for t in alone["tried"]]
        assert saved["auto"]["cost"] == alone["cost"]
        for got, want in zip(saved["auto"]["tried"], alone["tried"]):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, nan_ok=True)
        assert saved["auto"]["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-5, nan_ok=True)
        torch.testing.assert_close(saved["auto"]["losses"], alone["losses"], rtol=1e-5, atol=1e-6, equal_nan=True)
    # the divergence: named alike with 2 ranks and with one
    net, pair = worker.diverging()
    alone = gdlab.fit(net, pair, batch_size=32, lr=0.5, optimizer="sgd", epochs=3, progress=False)
    assert alone.findings[0].code == "non_finite" and alone.stop_reason.startswith("diverged")  # the divergence
    for saved in ranks:
        assert saved["codes"] == [f.code for f in alone.findings]
        assert saved["stop"] == alone.stop_reason and saved["stop"].startswith("diverged")
    # Ctrl-C reaching rank 1 alone: both ranks stop together, at the next check
    assert ranks[0]["stopped"] == ranks[1]["stopped"] == ("stopped", "interrupted", 10)
    # a sweep and restarts spread over the 2 ranks: the table of one process (rank 0 alone stores the sweep)
    table = gdlab.sweep(worker.model, worker.data(), lr=[0.03, 0.3, 3.0], seeds=[0, 1], steps=8,
                        batch_size=worker.BATCH, progress=False).table
    starts = gdlab.restarts(worker.model, worker.data(), seeds=5, lr=0.3, steps=8, batch_size=worker.BATCH,
                            progress=False)
    for saved in ranks:
        assert [_row(r) for r in saved["sweep"]] == [_row(r) for r in table]
        for got, want in zip(saved["sweep"], table):
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        summary = starts.summary()
        assert {k: v for k, v in saved["restarts"].items() if isinstance(v, str)} == \
            {k: v for k, v in summary.items() if isinstance(v, str)}
        for key, value in summary.items():
            if isinstance(value, (int, float)):
                assert saved["restarts"][key] == pytest.approx(value, rel=1e-5), key
    assert ranks[1]["sweep_id"] is None and len(Store(tmp_path / "store").sweeps()) == 1
    # remedy="auto": the same rollback and lower learning rate on every rank, as in one process
    net, pair = worker.diverging()
    cured = gdlab.fit(net, pair, batch_size=32, lr=0.5, optimizer="sgd", epochs=3, progress=False, remedy="auto",
                      log_every=5)
    assert any(action == "rollback_and_set_lr" for _, action in ranks[0]["remedies"])
    for saved in ranks:
        assert saved["remedies"] == [(r.step, r.action) for r in cured.remedies]
        assert saved["cured_lr"] == pytest.approx(cured.lr, rel=1e-6)
        _close(saved["cured"], net.state_dict())


def _same_periodic(got: list[dict[str, list[float]]], want: dict[str, list[float]], measured: int) -> None:
    """The periodic columns of every rank equal one process's (measured at the same steps, to float tolerance)."""
    import math

    assert {"noise_scale", "grad_snr", "grad_out/0"} <= want.keys()
    for columns in got:
        assert columns.keys() == want.keys()
        for key, values in want.items():
            steps = [i for i, v in enumerate(values) if not math.isnan(v)]
            assert len(steps) >= measured, (key, values)
            assert [i for i, v in enumerate(columns[key]) if not math.isnan(v)] == steps, key
            assert [columns[key][i] for i in steps] == pytest.approx([values[i] for i in steps], rel=1e-4), key
    if "dead_share/1" in want:  # units dead on one rank's slice but alive on the other's count as alive
        assert 0 < max(v for v in want["dead_share/1"] if not math.isnan(v)) < 0.5


def _partial_noise(got: list[dict[str, list[float]]]) -> None:
    """A sub-batch of 16 of the global batch of 64 on 2 ranks: the first 8 samples of each rank's slice, pooled;
    B_simple and the SNR as torch.func's per-sample gradients of the initial model on those 16 samples give them."""
    from torch.func import functional_call, grad, vmap

    index = next(batches(BatchPlan.make(worker.SAMPLES, worker.BATCH), 0, 0))
    X, y = worker.data()
    chosen = torch.cat([index[:8], index[32:40]])
    net = worker.model()
    params = {k: v.detach() for k, v in net.named_parameters()}

    def one(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(net, p, (x[None],)), t[None])

    per = vmap(grad(one), in_dims=(None, 0, 0))(params, X[chosen], y[chosen])
    flat = torch.cat([g.reshape(16, -1) for g in per.values()], 1).double()
    mean_sq = float(flat.mean(0).square().sum())
    trace = (float(flat.square().sum()) - 16 * mean_sq) / 15
    for columns in got:
        assert columns["noise_scale"][0] == pytest.approx(trace / mean_sq, rel=1e-4)
        assert columns["grad_snr"][0] == pytest.approx(mean_sq / (trace / worker.BATCH), rel=1e-4)


@pytest.mark.slow
def test_killed_rank_fails_the_run_and_resume_continues(tmp_path: Path) -> None:
    killed = _torchrun("kill", str(tmp_path))
    assert killed.returncode != 0
    (run,) = Store(tmp_path / "store").runs()
    assert run.status == "failed", run
    assert 4 <= run.steps < 12
    resumed = _torchrun("resume", str(tmp_path), run.id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    params, _ = _single()
    for r in range(2):
        saved = torch.load(tmp_path / f"rank{r}.pt")
        assert saved["run_id"] == run.id and saved["steps"] == 12
        _close(saved["params"], params)  # as if never interrupted
    assert Store(tmp_path / "store").get(run.id).status == "finished"


@pytest.mark.slow
def test_a_rank_that_stops_answering_ends_by_the_timeout(tmp_path: Path) -> None:
    hung = _torchrun("hang", str(tmp_path), env=_env(GDLAB_DIST_TIMEOUT="2"))
    assert hung.returncode != 0
    (run,) = Store(tmp_path / "store").runs()
    error = (run.error or "").lower()  # gloo says "timeout" or "timed out waiting 2000ms", by where it waited
    assert run.status == "failed" and ("timeout" in error or "timed out" in error), run


CRASHY = '''
import os, torch

def crashy(in_features, out_features):
    class Crashy(torch.nn.Linear):
        calls = 0
        def forward(self, x):
            Crashy.calls += 1
            if os.environ.get("RANK") == "1" and Crashy.calls == 8:
                raise RuntimeError("rank one broke")
            return super().forward(x)
    return Crashy(in_features, out_features)
'''


@pytest.mark.slow
def test_gdlab_train_nproc(tmp_path: Path) -> None:
    """`gdlab train --nproc 2` launches the ranks through torch.distributed.run: one stored run, printed once,
    equal to the run in one process."""
    args = ["train", "--data", "moons", "--model", "linear", "--epochs", "2", "--batch-size", "64", "--json",
            "--no-plot", "--instruments", "none"]
    two = _gdlab(*args, "--nproc", "2", "--store", "two", cwd=tmp_path)
    one = _gdlab(*args, "--store", "one", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    shown, alone = json.loads(two.stdout), json.loads(one.stdout)  # one JSON object: rank 0 printed alone
    assert shown["final"]["train_loss"] == pytest.approx(alone["final"]["train_loss"], rel=1e-5)
    assert [r.status for r in Store(tmp_path / "two").runs()] == ["finished"]
    assert Store(tmp_path / "two").runs()[0].plan["ranks"] == 2


@pytest.mark.slow
def test_a_crashing_rank_ends_all_with_its_error(tmp_path: Path) -> None:
    """One line and exit 2; the ranks' tracebacks are in the stored error, not on the terminal."""
    (tmp_path / "crashy.py").write_text(textwrap.dedent(CRASHY))
    done = _gdlab("train", "--data", "moons", "--model", "crashy:crashy", "--epochs", "3", "--batch-size", "32",
                  "--nproc", "2", "--store", "s", "-q", "--no-plot", cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert line.startswith("error: rank 1 failed first: ") and "rank one broke" in line, line
    assert len(line.splitlines()) == 1 and "Traceback" not in done.stdout + done.stderr
    (run,) = Store(tmp_path / "s").runs()
    assert run.status == "failed" and run.error is not None
    assert "\nrank 0:\nTraceback" in run.error  # rank 0's own, and rank 1's, that raised first
    assert "\nrank 1:\nTraceback" in run.error and 'raise RuntimeError("rank one broke")' in run.error


SIGNALLED = '''
import os, signal, torch

def killed(in_features, out_features):  # rank 1 dies at its 8th step, as under the OOM killer or kill -9
    class Killed(torch.nn.Linear):
        calls = 0
        def forward(self, x):
            Killed.calls += 1
            if os.environ.get("RANK") == "1" and Killed.calls == 8:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().forward(x)
    return Killed(in_features, out_features)

def interrupted(in_features, out_features):  # Ctrl-C at rank 0's 8th step: SIGINT to the whole process group
    class Interrupted(torch.nn.Linear):
        calls = 0
        def forward(self, x):
            Interrupted.calls += 1
            if os.environ.get("RANK") == "0" and Interrupted.calls == 8:
                os.killpg(os.getpgrp(), signal.SIGINT)
            return super().forward(x)
    return Interrupted(in_features, out_features)
'''


@pytest.mark.slow
def test_a_killed_rank_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A rank killed by SIGKILL: the one documented line names it (not rank 0's error that followed), exit 2, no
    traceback or torchelastic log on the terminal; the run is failed, rank 0's traceback in its stored error."""
    from multiproc import run_bounded

    (tmp_path / "signalled.py").write_text(textwrap.dedent(SIGNALLED))
    code, stdout, stderr = run_bounded(
        [sys.executable, "-m", "gdlab.cli", "train", "--data", "moons", "--model", "signalled:killed", "--epochs",
         "3", "--batch-size", "32", "--nproc", "2", "--store", "s", "-q", "--no-plot"],
        _env(), tmp_path, LIMIT)
    assert code == 2, stderr[-3000:]
    assert stderr.strip() == "error: rank 1 failed first: killed by SIGKILL (signal 9)" and stdout == ""
    (run,) = Store(tmp_path / "s").runs()
    assert run.status == "failed" and "\nrank 0:\nTraceback" in (run.error or "")


@pytest.mark.slow
def test_ctrl_c_under_nproc_stops_the_run_in_one_line_and_exit_130(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the launcher's process group, ranks included): rank 0 says how to resume, as in one
    process; exit 130; no torchelastic traceback or log line."""
    from multiproc import run_bounded

    (tmp_path / "signalled.py").write_text(textwrap.dedent(SIGNALLED))
    code, stdout, stderr = run_bounded(
        [sys.executable, "-m", "gdlab.cli", "train", "--data", "moons", "--model", "signalled:interrupted",
         "--epochs", "3", "--batch-size", "32", "--nproc", "2", "--store", "s", "--json", "--no-plot"],
        _env(), tmp_path, LIMIT)
    assert code == 130, stderr[-3000:]
    (run,) = Store(tmp_path / "s").runs()
    assert run.status == "stopped" and run.steps is not None and 7 <= run.steps < 75
    assert "Traceback" not in stderr and "SignalException" not in stderr and "death signal" not in stderr, stderr
    said = [line for line in stderr.splitlines() if line.strip() and not line.startswith("epoch ")]  # the bar's
    assert said == [f"stopped at step {run.steps}; continue with: gdlab train --resume {run.id} --store s"], said


@pytest.mark.parametrize("args,message", [
    (["--nproc", "0"], "invalid --nproc 0: expected a positive integer"),
    (["--nproc", "two"], "invalid --nproc 'two': expected a positive integer"),
    (["--nproc", "2", "--batch-size", "stochastic"], "stochastic descent takes one sample per step"),
    (["--nproc", "3", "--batch-size", "2"], "at least 3 samples per batch with --nproc 3"),
])
def test_nproc_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from gdlab.cli import app

    result = CliRunner().invoke(app, ["train", "--store", str(tmp_path), *args])
    assert result.exit_code == 2
    text = result.output.strip()
    assert message in text and len(text.splitlines()) == 1 and "Traceback" not in text


@pytest.mark.slow
def test_ranks_refuse_a_last_batch_too_small_with_one_line(tmp_path: Path) -> None:
    done = _gdlab("train", "--data", "moons", "--batch-size", "799", "--nproc", "2", "--store", "s", "-q",
                  cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: rank ") and len(done.stderr.strip().splitlines()) == 1
    assert "a last batch of at least 2 samples for 2 ranks" in done.stderr


@pytest.mark.slow
def test_gdlab_sweep_nproc(tmp_path: Path) -> None:
    args = ["sweep", "--data", "moons", "--model", "linear", "--lr", "1e-2:1:3", "--seeds", "2", "--steps", "10",
            "--json", "--no-plot"]
    two = _gdlab(*args, "--nproc", "2", "--store", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _gdlab(*args, "--store", "one", cwd=tmp_path)
    spread, alone = json.loads(two.stdout)["table"], json.loads(one.stdout)["table"]
    assert [_row(r) for r in spread] == [_row(r) for r in alone]
    assert [r["train_loss"] for r in spread] == pytest.approx([r["train_loss"] for r in alone], rel=1e-5)
    assert len(Store(tmp_path / "two").sweeps()) == 1


@pytest.mark.slow
def test_two_machines_equal_one_launch(tmp_path: Path) -> None:
    """Two torchrun launches with --nnodes 2, one per node rank, on 127.0.0.1: the result of one launch of 2."""
    port = _free_port()
    nodes = [tmp_path / "nodes", tmp_path / "one"]
    for folder in nodes:
        folder.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(port)]
    launches = [subprocess.Popen([*command, "--node-rank", str(rank), str(HERE / "distributed_worker.py"), "plain",
                                  str(nodes[0])], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for rank in (0, 1)]
    try:
        for launch in launches:
            _, stderr = launch.communicate(timeout=LIMIT)
            assert launch.returncode == 0, stderr[-3000:]
    finally:
        for launch in launches:
            launch.kill()
    one = _torchrun("plain", str(nodes[1]))
    assert one.returncode == 0, one.stderr[-3000:]
    for r in range(2):
        machine, launched = torch.load(nodes[0] / f"rank{r}.pt"), torch.load(nodes[1] / f"rank{r}.pt")
        _close(machine["params"], launched["params"])
        assert machine["plan"] == launched["plan"] == \
            "200 samples, global batch 64 = 2 ranks x 32 -> 4 iterations per epoch (last batch 8)"
    _close(torch.load(nodes[0] / "rank0.pt")["params"], _single()[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
