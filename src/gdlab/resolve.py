"""Resolve ``module:function`` specs naming the user's own data or model."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from gdlab.errors import InvalidParameter


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
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidParameter(param, spec, f"a name defined in module {module_name!r}") from None

