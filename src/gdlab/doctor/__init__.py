"""The doctor: names what goes wrong in training, shows the numbers behind it, and prescribes (or applies) a remedy.

- :mod:`~gdlab.doctor.findings`: :class:`Finding`, :class:`Remedy`, the detector registry and :func:`diagnose`;
- :mod:`~gdlab.doctor.detectors`: the detectors, pure functions ``History -> list[Finding]`` registered by code;
- :mod:`~gdlab.doctor.story`: the findings as a causal story (:func:`explain`: root causes first, each with what it
  explains and its remedy) and the one printer of it (:func:`story_lines`);
- :mod:`~gdlab.doctor.series`: what detectors and remedy rules read from the columns (smoothed loss, spikes...);
- :mod:`~gdlab.doctor.remedies`: the :class:`Doctor` callback and its remedy rules, tried in order each check;
- :mod:`~gdlab.doctor.probe`: short runs of candidate learning rates from where a run stands, as one population
  (how ``remedy="auto"`` raises a learning rate far too low in one move);
- :mod:`~gdlab.doctor.restarts`: new initial points for a run that settled at a minimum.

The numerics on input data (:func:`input_scales`, :func:`scale_ratio`) live in :mod:`gdlab.records.stats` and are
re-exported here.

Example:
    >>> from gdlab.records import History
    >>> h = History()
    >>> for s in range(1, 101): h.steps.append({"step": s, "loss": 2.3})
    >>> h.meta.update(lr=1e-6, task="classification", num_classes=10)
    >>> [f.code for f in diagnose(h)]
    ['not_learning']
"""

from gdlab.doctor import detectors as detectors  # registers every detector in DETECTORS
from gdlab.doctor.findings import (
    CODES,
    DETECTORS,
    REMEDY_MODES,
    SEVERITIES,
    Finding,
    Remedy,
    detector,
    diagnose,
    run_settings,
    trace_activations,
)
from gdlab.doctor.probe import Probe, probe_lr
from gdlab.doctor.remedies import REMEDY_RULES, Doctor
from gdlab.doctor.restarts import fresh_models, restart_remedy
from gdlab.doctor.series import spike_window
from gdlab.doctor.story import Cause, Consequence, Diagnosis, explain, remedy_text, story_lines
from gdlab.records.stats import ILL_CONDITIONED, input_scales, scale_ratio

__all__ = [
    "CODES",
    "Cause",
    "Consequence",
    "DETECTORS",
    "Diagnosis",
    "Doctor",
    "Finding",
    "ILL_CONDITIONED",
    "Probe",
    "REMEDY_MODES",
    "REMEDY_RULES",
    "Remedy",
    "SEVERITIES",
    "detector",
    "diagnose",
    "explain",
    "fresh_models",
    "input_scales",
    "probe_lr",
    "remedy_text",
    "restart_remedy",
    "run_settings",
    "scale_ratio",
    "spike_window",
    "story_lines",
    "trace_activations",
]
