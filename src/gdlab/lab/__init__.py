"""The lab: 2-D test functions (:mod:`~gdlab.lab.functions`), optimizers walking over them
(:mod:`~gdlab.lab.walks`), loss landscapes of real models (:mod:`~gdlab.lab.landscape`) and local and global
gradients of an expression (:mod:`~gdlab.lab.explain`).

Example:
    >>> sorted(functions.FUNCTIONS)[:3]
    ['ackley', 'beale', 'booth']
"""

from gdlab.lab import explain, functions, landscape
from gdlab.lab.walks import LabResult, Walk, run, walk, walk_together

__all__ = [
    "LabResult",
    "Walk",
    "explain",
    "functions",
    "landscape",
    "run",
    "walk",
    "walk_together",
]
