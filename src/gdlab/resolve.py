"""Resolve ``module:function`` specs naming the user's own data or model, and call them so that what goes wrong
inside the user's code is told in one line with their file and line.

A spec typed by the user is theirs to run. A spec read from a run store (a run's stored config) is not: a store
may come from someone else, or be damaged, and importing ``os:abort`` or ``code:interact`` from it would run
that code. :func:`consent` is the one gate: a command that rebuilds a stored run (``gdlab predict``, ``export``,
``train --resume``) calls it before anything is imported, and it passes only when the user named the same spec
again on the command line (``--model mod:fn``) or passed ``--trust-store``.

Example:
    >>> stored_code({"model": "user_models:net", "data": "moons"})
    {'model': 'user_models:net'}
    >>> try:
    ...     consent({"model": "os:abort"}, run_id="1a2b", flags={"model": "--model"})
    ... except UntrustedCode as e:
    ...     print(str(e).split(": ")[-1])
    pass --model os:abort to run it, or --trust-store
    >>> consent({"model": "os:abort"}, run_id="1a2b", given={"model": "os:abort"})  # named again: consent
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from gdlab.errors import GdlabError, InvalidParameter, shorten

__all__ = ["DATA_FILE_SUFFIXES", "TRUST_FLAG", "UntrustedCode", "UserCodeError", "call_user", "consent", "names_code",
           "raised", "resolve", "stored_code", "where"]

DATA_FILE_SUFFIXES = (".csv", ".npz")
"""The data files gdlab reads: a data spec ending so is a file, never ``module:function``."""

TRUST_FLAG = "--trust-store"
"""The flag that consents to importing every ``module:function`` a run store names."""


class UserCodeError(GdlabError):
    """The user's own function (``--data`` or ``--model`` ``module:function``) raised an error."""


class UntrustedCode(GdlabError):
    """A stored run names code (``module:function``) that gdlab imports only with the user's consent."""


def names_code(spec: str, *, files: bool = False) -> bool:
    """Whether ``spec`` is imported as ``module:function``: it holds a ``:`` (no built-in model or dataset name
    does) and, where a file may be named instead (``files``: data), it is neither a ``.csv`` / ``.npz`` path nor a
    path that exists. :func:`gdlab.models.build` and :func:`gdlab.data.datasets.load` decide by this rule.

    Example:
        >>> names_code("mymodule:make"), names_code("mlp"), names_code("C:/data/train.csv", files=True)
        (True, False, False)
    """
    if ":" not in spec:
        return False
    return not files or not (Path(spec).suffix.lower() in DATA_FILE_SUFFIXES or Path(spec).exists())


def stored_code(config: Mapping[str, Any]) -> dict[str, str]:
    """The ``module:function`` specs of a stored run's ``config`` by key (``model``, ``data``): the code that
    rebuilding the run would import. Built-in models and datasets, and data files, are not code."""
    found: dict[str, str] = {}
    model, data = config.get("model"), config.get("data")
    if isinstance(model, str) and names_code(model):
        found["model"] = model
    if isinstance(data, str) and names_code(data, files=True):
        found["data"] = data
    return found


def consent(config: Mapping[str, Any], *, run_id: str, given: Mapping[str, Any] | None = None, trust: bool = False,
            flags: Mapping[str, str] | None = None, must_match: Collection[str] = ()) -> None:
    """Refuse to rebuild a stored run whose ``config`` names code the user has not consented to run.

    Each ``module:function`` of :func:`stored_code` needs ``trust`` (``--trust-store``) or the same spec in
    ``given`` (what the user typed, by config key). ``flags`` maps the keys the command can take again to their
    flags (``{"model": "--model"}``), for the message. A key of ``must_match`` given with another value is an
    error: passed again it is consent, never a replacement of the stored spec.

    Raises:
        UntrustedCode: one line naming each spec and the flags that would run it.
        InvalidParameter: a ``must_match`` key given with a value other than the stored one.
    """
    from gdlab.guard import printable

    given, flags = given or {}, flags or {}
    code = stored_code(config)
    for key in must_match:
        value = given.get(key)
        if value is not None and value != config.get(key):
            stored = code.get(key) or config.get(key)
            raise InvalidParameter(flags.get(key, key), value, f"the run's stored {key} '{printable(stored)}' (given "
                                   "again, it consents to running that code; it does not replace it)")
    missing = {key: spec for key, spec in code.items() if not trust and given.get(key) != spec}
    if not missing:
        return
    named = " and ".join(f"{key} '{printable(spec)}'" for key, spec in missing.items())
    it = "it" if len(missing) == 1 else "them"
    if all(key in flags for key in missing):  # each can be named again on this command's line
        again = " ".join(f"{flags[key]} {printable(spec)}" for key, spec in missing.items())
        how = f"pass {again} to run {it}, or {TRUST_FLAG}"
    else:
        how = f"pass {TRUST_FLAG} to run {it}"
    raise UntrustedCode(f"run {printable(run_id)} stores {named}, code gdlab would import and run; gdlab runs no code "
                        f"named by a store without consent: {how}")


def resolve(spec: str, param: str) -> Any:
    """The object named by ``module:name``; the current folder is importable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidParameter(param, spec, "module:function")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InvalidParameter(param, spec, f"an importable module ({e})") from None
    except Exception as e:  # the module itself fails as it is imported
        raise UserCodeError(f"importing {shorten(spec)} raised {_said(e)}{where(e, module_name)}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidParameter(param, spec, f"a name defined in module {module_name!r}") from None


def call_user(spec: str, factory: Callable[..., Any], param: str, offered: dict[str, Any] | None = None) -> Any:
    """``factory`` (resolved from ``spec``) called with those of ``offered`` it takes by name.

    A function that needs other arguments is refused before it is called; an error raised inside it is a
    :class:`UserCodeError` naming the spec, the error and the user's file and line (gdlab's own errors pass as they
    are)."""
    offered = offered or {}
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or an object without a signature: called as it is
        params = None
    if params is not None:
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in offered.items() if takes_all or k in params}
        needed = [name for name, p in params.items() if p.default is p.empty and name not in kwargs
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if needed:
            can = " or ".join(offered) if offered else "nothing"
            raise InvalidParameter(param, spec, f"a function callable without arguments (gdlab can pass {can}); it "
                                   f"needs {', '.join(needed)}")
    try:
        return factory(**kwargs)
    except GdlabError:
        raise
    except Exception as e:
        module = getattr(factory, "__module__", None) or spec.partition(":")[0]
        raise UserCodeError(f"{shorten(spec)} raised {_said(e)}{where(e, module)}") from None


def _said(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {shorten(lines[0], 160)}" if lines else type(error).__name__


def where(error: BaseException, module: str | None = None) -> str:
    """`` (file.py, line 7)``: where ``error`` was raised in the user's code (the innermost frame in ``module``'s
    file, else the innermost outside gdlab, torch and the standard library), or nothing."""
    frames = traceback.extract_tb(error.__traceback__)
    home = getattr(sys.modules.get(module or ""), "__file__", None)
    mine = [f for f in frames if home and Path(f.filename) == Path(home)]
    if not mine:
        skip = (str(Path(__file__).parent), str(Path(inspect.__file__).parent), "site-packages", "<frozen")
        mine = [f for f in frames if not any(s in f.filename for s in skip)]
    if not mine:
        return ""
    frame = mine[-1]
    return f" ({Path(frame.filename).name}, line {frame.lineno})"


def raised(error: BaseException, module: str | None = None) -> str:
    """``RuntimeError: boom (model.py, line 7)``: an error raised in the user's code told in one line (its type,
    the first line of its message, and :func:`where` it was raised).

    Example:
        >>> raised(ValueError("boom\\nmore"))
        'ValueError: boom'
    """
    return f"{_said(error)}{where(error, module)}"
