"""``--nproc N``: a command run data-parallel over N processes of this machine, launched by ``torch.distributed.run``
(torchrun's own launcher, not a copy of it), and what each launched rank does differently (only rank 0 prints).

The ranks run ``python -m gdlab.cli`` with the same arguments, ``--nproc`` left out; ``gdlab.fit`` sees the
``torchrun`` environment and trains data-parallel (:mod:`gdlab.distributed`). When a rank fails (an error, a crash,
or killed by a signal), torchrun ends the others; each rank writes its error where torchrun reads it, and its
traceback where rank 0 stores it with the run's error (:func:`gdlab.distributed.failure_text`), never on the
terminal. The launching command prints the first failure as one line, ``error: rank R failed first: ...``, and
exits with code 2 (130 after Ctrl-C: rank 0 has said how to resume). torchelastic's own log lines and tracebacks
are silenced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import typer

from gdlab.cli.root import err, safe
from gdlab.errors import GdlabError, InvalidParameter, check_int

__all__ = ["NPROC_HELP", "check_batch", "launch", "launched_rank", "parse_nproc", "quiet_rank", "record_error"]

NPROC_HELP = ("Train data-parallel over this many processes on this machine (launched through "
              "torch.distributed.run; gloo on the CPU, NCCL on CUDA); --batch-size is the global batch.")


def parse_nproc(value: Any) -> int:
    """``--nproc``: a positive integer."""
    text = str(value).strip()
    number: Any = int(text) if text.lstrip("+-").isdigit() else text
    return check_int(number, "--nproc", expected="a positive integer (the number of processes)")


def check_batch(nproc: int, batch_size: Any) -> None:
    """A batch size that can be split over ``nproc`` ranks (the last batch is checked by the ranks, which know the
    data)."""
    if batch_size == "stochastic":
        raise InvalidParameter("--batch-size", "stochastic", f"a batch of at least {nproc} samples with --nproc "
                               f"{nproc}", "stochastic descent takes one sample per step, which cannot be split "
                               "over ranks")
    if isinstance(batch_size, int) and batch_size < nproc:
        raise InvalidParameter("--batch-size", batch_size, f"at least {nproc} samples per batch with --nproc {nproc}, "
                               "one for each rank")


def launched_rank() -> int | None:
    """This process's rank when torchrun launched it (``RANK`` in the environment), else None."""
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None and "WORLD_SIZE" in os.environ else None


LAUNCHED = "GDLAB_NPROC_LAUNCHED"
"""Set in the ranks ``--nproc`` launches: the launching command prints their first error, they print none."""


def quiet_rank() -> bool:
    """Whether this process is a rank other than 0 launched by ``--nproc``: it prints nothing, not even
    ``interrupted`` after Ctrl-C (rank 0 says it once)."""
    return os.environ.get(LAUNCHED) == "1" and bool(launched_rank())


def record_error(error: BaseException) -> bool:
    """Under torchrun, write ``error`` as one line where torchrun reads a rank's failure (with the time it happened,
    to the microsecond, so the launching command can tell which rank failed first), and a crash's traceback where
    rank 0 stores it (:func:`gdlab.distributed.keep_traceback`). True when the launching ``--nproc`` command will
    print it (the rank need not, and prints no traceback)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or isinstance(error, (typer.Exit, SystemExit)):
        return False
    if not isinstance(error, GdlabError) or error.__cause__ is not None:  # a crash, or gdlab's line about one
        from gdlab.distributed import keep_traceback

        keep_traceback(error)
    line = (str(error).strip().splitlines() or [""])[0]
    message = f"{type(error).__name__}: {line}" if not isinstance(error, GdlabError) else line
    try:
        with open(path, "w") as fp:
            json.dump({"message": message, "timestamp": int(time.time()), "gdlab_time": time.time(),
                       "gdlab_usage": isinstance(error, GdlabError)}, fp)
    except OSError:  # the error itself is what matters: it is raised either way
        return False
    return os.environ.get(LAUNCHED) == "1"


def launch(nproc: int, command: str, argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``gdlab COMMAND`` (the arguments after it in ``argv``, ``--nproc`` left out) on ``nproc`` ranks through
    ``torch.distributed.run``, and exit as they did: 0; 2 with one line naming the rank that failed first; 130
    after Ctrl-C."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from gdlab.distributed import TRACEBACKS_ENV

    args = list(sys.argv[1:] if argv is None else argv)
    rest = _without_nproc(args[args.index(command) + 1:] if command in args else args)
    launcher = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module",
                                             "gdlab.cli", command, *rest])
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, without its warning
    os.environ[LAUNCHED] = "1"
    _silence_torchelastic()  # the first failure is said below, in one line
    tracebacks = tempfile.mkdtemp(prefix="gdlab-ranks-")
    os.environ[TRACEBACKS_ENV] = tracebacks
    try:
        run(launcher)
    except ChildFailedError as failed:
        rank, message, code = _first(failed)
        if code == 130:  # rank 0 was stopped (Ctrl-C) and said how to resume
            raise typer.Exit(130) from None
        err.print(f"error: rank {rank} failed first: {safe(message)}", soft_wrap=True)
        raise typer.Exit(2) from None
    except (SignalException, KeyboardInterrupt) as stopped:  # the launcher itself was signalled; the ranks ended
        sig = getattr(stopped, "sigval", signal.SIGINT)
        if sig == signal.SIGINT:  # Ctrl-C reached every rank too: rank 0 said how to resume
            raise typer.Exit(130) from None
        err.print(f"error: stopped by {signal.Signals(sig).name}: the {nproc} ranks were ended", soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        os.environ.pop(TRACEBACKS_ENV, None)
        shutil.rmtree(tracebacks, ignore_errors=True)
    raise typer.Exit(0)


def _silence_torchelastic() -> None:
    """torchelastic's loggers quiet: each sets its own level when imported (``LOGLEVEL``, warning by default), so
    the parent's level is not enough."""
    manager = logging.Logger.manager
    for name in ["torch.distributed", *manager.loggerDict]:
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _without_nproc(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _first(failed: Any) -> tuple[int, str, int]:
    """``(rank, message, exit code)`` of the rank that failed first. A rank killed by a signal (not the SIGTERM or
    SIGINT by which the launcher ends the others) left no error, and the others' errors follow from its absence
    (a peer closed the connection): it comes first; then the earliest error."""
    def order(item: tuple[int, Any]) -> tuple[int, float]:
        failure = item[1]
        data = failure.error_file_data or {}
        killed = failure.exitcode < 0 and "gdlab_time" not in data and -failure.exitcode not in (signal.SIGTERM,
                                                                                                   signal.SIGINT)
        return (0 if killed else 1, float(data.get("gdlab_time", failure.timestamp)))

    rank, failure = min(failed.failures.items(), key=order)
    data = failure.error_file_data or {}
    message = failure.message if isinstance(failure.message, str) else failure.message.get("message", "")
    if "gdlab_time" not in data or not message:  # no error written: a signal, or an exit before gdlab ran
        message = f"killed by {failure.signal_name()} (signal {-failure.exitcode})" if failure.exitcode < 0 else \
            f"exit code {failure.exitcode}"
    return rank, message, failure.exitcode
