"""Resolve ``module:function`` specs naming the user's own data or model, and call them so that what goes wrong
inside the user's code is told in one line with their file and line."""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gdlab.errors import GdlabError, InvalidParameter, shorten

__all__ = ["UserCodeError", "call_user", "resolve", "where"]


class UserCodeError(GdlabError):
    """The user's own function (``--data`` or ``--model`` ``module:function``) raised an error."""


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
