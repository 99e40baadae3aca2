"""The doctor's findings read as a causal story: which finding explains which, the root causes first, each with the
consequences it explains attached and the remedy for the cause only; and the one printer that turns the story into
lines (the CLI, ``gdlab doctor``, ``gdlab show``, the Lightning and Hugging Face callbacks, TensorBoard's text and the
HTML report all print these).

The explanations are the rules of :data:`RULES`, each ``cause kind -> consequence kinds``, read from the findings
alone (their codes, evidence and steps), so a stored run's findings tell the same story as a live run's:

- gradients never zeroed between updates (``grads_not_zeroed``, a bug in the loop) explain everything a learning
  rate far too large would: the blow-up, dead and saturated units, the vanishing gradient, the stalled loss;
- a cross-entropy given probabilities (``loss_given_probabilities``) explains steps that look small and a stalled
  loss; a target that broadcasts (``target_shape_broadcasts``) a loss that stalls at the targets' mean; data sorted
  by label (``labels_sorted``) a loss that jumps as if the learning rate were too high;
- a learning rate too large (``lr_too_high``, or a ``non_finite`` blow-up blamed on the lr) explains dead ReLUs and
  saturated units, and a vanishing or exploding gradient that follows it;
- dead or saturated units explain a vanishing gradient that follows them, and steps that look small
  (``lr_too_low``);
- an update that changes nothing (``update_changes_nothing``) and a schedule that ends early
  (``schedule_ends_early``) explain a loss that stalls; validation in train() mode and dropout active in eval()
  explain a validation loss that looks like overfitting; replicas out of step under data parallelism a loss that
  stalls or jumps;
- a loop set up wrong (the optimizer holds nothing trainable, parameters with gradients left out of it, the model
  trained in ``eval()``) explains a loss that stalls: ``not_learning``, ``plateau``, ``local_minimum`` (and, for
  the first two, steps that look small, ``lr_too_low``);
- bad data (a ``non_finite`` finding naming the inputs or targets) and a model or starting point that is not finite
  explain the non-finite values and the blow-ups from their step on;
- an unscaled target (a finding naming the target's scale) explains a huge loss: ``lr_too_high``, the blow-up;
- a specific cause (``lr_too_low``, ``vanishing_gradients``, ...) explains the generic ``not_learning``, which
  stands alone only when nothing explains it.

Where a rule says "follows", the consequence must start at or after its cause: each finding starts at its
evidence's ``since_step`` (where its unbroken run of readings began), else its ``step``; an unknown step does not
refute. A finding explained by several others hangs under the nearest one on a chain between them (a vanishing
gradient under the dead units, under the learning rate that killed them); of causes with no chain between them, under
the one furthest up (bad data before the learning rate, before what the lr explains).

Example:
    >>> from gdlab.doctor.findings import Finding
    >>> story = explain([
    ...     Finding("vanishing_gradients", "warning", 60, {"first_over_last": 0.0, "since_step": 26}, "it shrinks"),
    ...     Finding("dead_relu", "warning", 60, {"dead_share": {"1": 0.9}, "since_step": 26}, "units died"),
    ...     Finding("lr_too_high", "warning", 20, {"lr": 2.0}, "the loss rose", {"action": "set_lr", "lr": 0.6})])
    >>> [c.code for c in story.causes], [c.code for c in story.causes[0].consequences]
    (['lr_too_high'], ['dead_relu'])
    >>> print("\\n".join(map(str, story_lines(story))))
    gdlab doctor: 3 findings, 1 root cause
    warning lr_too_high (step 20): the loss rose
        evidence: lr 2
        remedy:   set_lr (lr 0.6)
        because of this:
          warning dead_relu (step 60): units died
              evidence: dead_share {1 0.9}, since_step 26
              why: large steps push units where they no longer respond: ReLUs die (output 0 for every sample), tanh and
                   sigmoid units saturate
              because of this:
                warning vanishing_gradients (step 60): it shrinks
                    evidence: first_over_last 0, since_step 26
                    why: dead or saturated units pass no gradient back: the gradient vanishes on its way to the first
                         layers
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from gdlab.doctor.findings import SEVERITIES, Finding
from gdlab.guard import printable

__all__ = ["Rule", "RULES", "KIND_ORDER", "Consequence", "Cause", "Diagnosis", "Line", "kind", "explain",
           "of_result", "report_text", "story_lines", "cause_lines", "finding_lines", "remedy_text"]


@dataclass(frozen=True)
class Rule:
    """One explanation: a finding of kind ``cause`` explains findings of the kinds in ``explains`` (when
    ``follows``, only those that start at or after it), for the reason ``why`` (one sentence, printed with the
    consequence).

    Example:
        >>> rule = next(r for r in RULES if r.cause == "data")
        >>> "diverged" in rule.explains, rule.follows
        (True, True)
    """

    cause: str
    explains: tuple[str, ...]
    follows: bool
    why: str


KIND_ORDER = {"grads_not_zeroed": 0, "optimizer_has_no_trainable_params": 0, "grads_in_no_param_group": 0,
              "training_in_eval_mode": 0, "loss_given_probabilities": 0, "target_shape_broadcasts": 0,
              "same_batch_every_step": 0, "labels_sorted": 0, "update_changes_nothing": 0, "schedule_ends_early": 0,
              "validation_in_train_mode": 0, "dropout_in_eval": 0, "replicas_out_of_step": 0, "data": 0, "model": 0,
              "target": 1, "lr_too_high": 2,
              "diverged": 3, "gradient_noise": 3,
              "dead_relu": 4,
              "saturated_activations": 4, "vanishing_gradients": 5, "exploding_gradients": 5,
              "lr_too_low": 5, "local_minimum": 6, "plateau": 6, "not_learning": 6, "overfitting": 7}
"""How far down a chain of explanations each kind sits (a rule always points from a lower to a higher one, so the
graph has no cycle); overfitting, and every other code (ill_conditioned_inputs...), is 7 and explains nothing."""

RULES: tuple[Rule, ...] = (
    Rule("grads_not_zeroed", ("lr_too_high", "diverged", "exploding_gradients", "dead_relu", "saturated_activations",
                              "vanishing_gradients", "gradient_noise", "lr_too_low", "local_minimum", "plateau",
                              "not_learning"), False,
         "gradients that pile up from step to step make every update larger than the learning rate says: the run "
         "behaves as if the learning rate were far too large, whatever it is"),
    Rule("optimizer_has_no_trainable_params", ("not_learning", "lr_too_low", "plateau", "local_minimum"), False,
         "an optimizer that holds nothing trainable changes nothing: the loss stays where it started, whatever the "
         "learning rate"),
    Rule("grads_in_no_param_group", ("not_learning", "lr_too_low", "plateau", "local_minimum"), False,
         "parameters left out of the optimizer never move: the layers they belong to stay as they started and the "
         "loss stalls, whatever the learning rate"),
    Rule("training_in_eval_mode", ("not_learning", "plateau", "local_minimum"), False,
         "batch-norm layers in eval() normalise with running statistics that never update, and dropout is off: "
         "the model trains on other activations than the batch's, and may stall"),
    Rule("loss_given_probabilities", ("lr_too_low", "vanishing_gradients", "not_learning", "plateau",
                                      "local_minimum"), False,
         "a cross-entropy given probabilities softmaxes them again: the loss can barely fall and its gradient is "
         "squashed, so the steps look small and the run stalls"),
    Rule("target_shape_broadcasts", ("not_learning", "plateau", "local_minimum", "lr_too_low"), False,
         "a loss over every (prediction, target) pair is lowest at the targets' mean: the model stops there and "
         "learns nothing of the inputs"),
    Rule("labels_sorted", ("lr_too_high", "gradient_noise", "not_learning", "plateau", "local_minimum",
                           "exploding_gradients"), False,
         "batches of one class pull the model to that class, the next run of batches to another: the loss jumps "
         "and settles nowhere, as if the learning rate were too high"),
    Rule("update_changes_nothing", ("not_learning", "lr_too_low", "plateau", "local_minimum"), False,
         "an update that moves no parameter leaves the loss where it started, whatever the learning rate"),
    Rule("schedule_ends_early", ("lr_too_low", "plateau", "not_learning", "local_minimum", "vanishing_gradients"),
         False, "a learning rate near zero from early in the run on makes every later step tiny: the loss stalls "
         "where the schedule ended"),
    Rule("validation_in_train_mode", ("overfitting",), False,
         "validation in train() mode drops units and normalises by the validation batch: its loss is worse than "
         "the model's, and looks like overfitting"),
    Rule("dropout_in_eval", ("overfitting",), False,
         "dropout that stays on in eval() makes the validation loss worse than the model's, and looks like "
         "overfitting"),
    Rule("replicas_out_of_step", ("not_learning", "plateau", "local_minimum", "gradient_noise", "lr_too_high"),
         True, "replicas that differ each average gradients taken at other points: the update fits none of them, "
         "and the loss stalls or jumps"),
    Rule("data", ("diverged", "lr_too_high", "exploding_gradients", "lr_too_low", "not_learning"), True,
         "a batch held NaN or inf values: what was computed from it is not finite, whatever the learning rate"),
    Rule("model", ("diverged", "lr_too_high", "exploding_gradients", "lr_too_low", "not_learning"), True,
         "the model's parameters or outputs were not finite: no step from there is finite"),
    Rule("target", ("lr_too_high", "diverged", "exploding_gradients", "not_learning"), False,
         "targets this large make the loss and its gradient huge: any learning rate that moves the weights "
         "overshoots, until the targets are scaled"),
    Rule("lr_too_high", ("dead_relu", "saturated_activations"), False,
         "large steps push units where they no longer respond: ReLUs die (output 0 for every sample), tanh and "
         "sigmoid units saturate"),
    Rule("lr_too_high", ("not_learning", "lr_too_low", "local_minimum"), False,
         "steps too large to settle keep the loss above the level the run reached, and leave it there"),
    Rule("lr_too_high", ("vanishing_gradients",), True,
         "large steps left the layers where they pass little gradient back: it vanishes on its way to the first "
         "layers"),
    Rule("lr_too_high", ("diverged", "exploding_gradients"), True,
         "the steps too large for the loss surface grew until the numbers broke"),
    Rule("diverged", ("not_learning", "lr_too_low"), False,
         "a run whose loss became NaN or inf learns nothing after it"),
    Rule("diverged", ("dead_relu", "saturated_activations", "vanishing_gradients", "exploding_gradients"), True,
         "the blow-up left the weights where units no longer respond"),
    Rule("dead_relu", ("vanishing_gradients",), True,
         "dead or saturated units pass no gradient back: the gradient vanishes on its way to the first layers"),
    Rule("saturated_activations", ("vanishing_gradients",), True,
         "dead or saturated units pass no gradient back: the gradient vanishes on its way to the first layers"),
    Rule("dead_relu", ("lr_too_low", "not_learning", "local_minimum", "plateau"), False,
         "units that pass no gradient do not move: the steps look small and the loss stays"),
    Rule("saturated_activations", ("lr_too_low", "not_learning", "local_minimum", "plateau"), False,
         "units that pass no gradient do not move: the steps look small and the loss stays"),
    Rule("gradient_noise", ("not_learning",), False, "noise dominates the steps: the loss cannot settle lower"),
    Rule("gradient_noise", ("dead_relu",), False,
         "steps led by the noise of a few samples, each as long as the learning rate makes it, push units where no "
         "sample reaches them: the ReLUs die"),
    Rule("vanishing_gradients", ("not_learning",), False, "the early layers get almost no gradient and barely learn"),
    Rule("exploding_gradients", ("not_learning",), False, "a few huge steps throw away what was learnt"),
    Rule("lr_too_low", ("not_learning",), False, "steps this small barely move the loss"),
)
"""The explanations, in the order they are tried; see the module's text."""


def _as_finding(finding: Any) -> Finding:
    """A :class:`Finding` from a finding or its stored dict (unknown keys left out)."""
    if isinstance(finding, Finding):
        return finding
    d = finding.to_dict() if hasattr(finding, "to_dict") else dict(finding)
    names = {f.name for f in fields(Finding)}
    d = {k: v for k, v in d.items() if k in names}
    return Finding(d.get("code", "finding"), d.get("severity", "warning"), d.get("step"), d.get("evidence") or {},
                   d.get("explanation") or "", d.get("remedy"))


def kind(finding: Finding) -> str:
    """What a finding says caused the run's trouble, as a rule reads it: ``data`` (a ``non_finite`` finding naming
    the inputs or targets), ``model`` (one naming the parameters, the model's output or the loss function),
    ``target`` (a finding naming the target's scale), ``diverged`` (a ``non_finite`` blow-up blamed on the learning
    rate), else the finding's code.

    Example:
        >>> kind(Finding("non_finite", "error", 3, {"quantity": "inputs", "source": "data"}, "NaN inputs"))
        'data'
    """
    evidence = finding.evidence if isinstance(finding.evidence, dict) else {}
    remedy = finding.remedy if isinstance(finding.remedy, dict) else {}
    if evidence.get("target_scale") is not None or remedy.get("action") in ("scale_targets", "standardize_target"):
        return "target"
    if finding.code == "non_finite":
        source = evidence.get("source")
        return "data" if source == "data" else "model" if source is not None else "diverged"
    return finding.code


def _start(finding: Finding) -> float | None:
    """Where a finding's evidence starts: its ``since_step``, else its ``step`` (None when unknown)."""
    evidence = finding.evidence if isinstance(finding.evidence, dict) else {}
    for value in (evidence.get("since_step"), finding.step):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _explains(cause: Finding, effect: Finding) -> Rule | None:
    """The first rule by which ``cause`` explains ``effect``, or None."""
    a, b = kind(cause), kind(effect)
    for rule in RULES:
        if rule.cause == a and b in rule.explains:
            start_a, start_b = _start(cause), _start(effect)
            if rule.follows and start_a is not None and start_b is not None and start_b < start_a:
                continue
            return rule
    return None


@dataclass
class Consequence:
    """A finding another explains: ``finding``, the reason (``because``: the rule's sentence) and the findings it
    explains in turn (``consequences``)."""

    finding: Finding
    because: str
    consequences: list[Consequence] = field(default_factory=list)

    @property
    def code(self) -> str:
        """The finding's code."""
        return self.finding.code

    def to_dict(self) -> dict[str, Any]:
        """The consequence as plain data: the finding's, with ``because`` and the nested ``consequences``."""
        return {**self.finding.to_dict(), "because": self.because,
                "consequences": [c.to_dict() for c in self.consequences]}


@dataclass
class Cause:
    """A root cause: a finding nothing else explains, with the ``consequences`` it explains (nested) and its
    ``remedy`` (the only remedy the story gives for them)."""

    finding: Finding
    consequences: list[Consequence] = field(default_factory=list)

    @property
    def code(self) -> str:
        """The finding's code."""
        return self.finding.code

    @property
    def remedy(self) -> dict[str, Any] | None:
        """The remedy for the cause (its consequences' own remedies are not given)."""
        return self.finding.remedy

    @property
    def severity(self) -> str:
        """The gravest severity among the cause and what it explains (a warning that caused an error is grave)."""
        found = [self.finding, *(c.finding for c in _walk(self.consequences))]
        return max((f.severity for f in found), key=lambda s: SEVERITIES.index(s) if s in SEVERITIES else -1)

    def to_dict(self) -> dict[str, Any]:
        """The cause as plain data: the finding's, with the story's ``severity`` and the nested ``consequences``."""
        return {**self.finding.to_dict(), "story_severity": self.severity,
                "consequences": [c.to_dict() for c in self.consequences]}


def _walk(consequences: Iterable[Consequence]) -> Iterable[Consequence]:
    for c in consequences:
        yield c
        yield from _walk(c.consequences)


@dataclass
class Diagnosis:
    """The doctor's story of a run: its root ``causes`` (gravest first), each with what it explains; the run's id
    (``run_id``, None without a store), the remedies the doctor applied during it (``remedies``: ``remedy="auto"``,
    as dicts with ``step``, ``action``, ``params``, ``reason``) and the steps it read (``steps``, None if unsaid).

    Example:
        >>> explain([]).causes, explain([]).findings()
        ([], [])
    """

    causes: list[Cause] = field(default_factory=list)
    run_id: str | None = None
    remedies: list[dict[str, Any]] = field(default_factory=list)
    steps: int | None = None

    def findings(self) -> list[Finding]:
        """Every finding of the story, each root cause followed by what it explains."""
        out: list[Finding] = []
        for cause in self.causes:
            out.append(cause.finding)
            out.extend(c.finding for c in _walk(cause.consequences))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The story as plain data (what the HTML report shows)."""
        return {"run_id": self.run_id, "steps": self.steps, "causes": [c.to_dict() for c in self.causes],
                "remedies": self.remedies}


def explain(findings: Iterable[Any], *, run_id: str | None = None, remedies: Iterable[Any] = (),
            steps: int | None = None) -> Diagnosis:
    """Build findings (:class:`Finding` objects or their stored dicts) into the causal story of :data:`RULES`.

    Args:
        findings: the doctor's flat list (``Result.findings``, or a stored run's).
        run_id: the run's id, printed with the story.
        remedies: the remedies applied during the run (:class:`~gdlab.doctor.Remedy` objects or dicts).
        steps: the steps the run trained (printed in the header).

    Returns:
        The :class:`Diagnosis`: each finding once, under the nearest finding that explains it, or as a root cause;
        the causes by severity (of what they explain too), then how far up the chain they sit, then step.

    Example:
        >>> f = [Finding("not_learning", "error", 99, {}, "flat"), Finding("lr_too_low", "warning", 1, {}, "small")]
        >>> story = explain(f)
        >>> [(c.code, c.severity, [k.code for k in c.consequences]) for c in story.causes]
        [('lr_too_low', 'error', ['not_learning'])]
    """
    found = [_as_finding(f) for f in findings]
    edges = {i: {j: rule for j, effect in enumerate(found) if j != i
                 for rule in [_explains(cause, effect)] if rule is not None} for i, cause in enumerate(found)}

    def reach(i: int) -> set[int]:
        seen: set[int] = set()
        todo = list(edges[i])
        while todo:
            j = todo.pop()
            if j not in seen:
                seen.add(j)
                todo.extend(edges[j])
        return seen

    reached = {i: reach(i) for i in edges}
    parent: dict[int, tuple[int, Rule]] = {}
    for j in range(len(found)):
        options = [i for i in edges if j in edges[i]]
        # the nearest on a chain (dead units, not the lr that killed them, explain the vanishing ratio); of
        # causes on no chain between them, the one furthest up (then the first)
        nearest = [i for i in options if not any(k in reached[i] for k in options if k != i)]
        if nearest:
            i = min(nearest, key=lambda o: (KIND_ORDER.get(kind(found[o]), 7), o))
            parent[j] = (i, edges[i][j])

    def nested(i: int) -> list[Consequence]:
        return [Consequence(found[j], rule.why, nested(j)) for j, (p, rule) in parent.items() if p == i]

    causes = [Cause(f, nested(i)) for i, f in enumerate(found) if i not in parent]
    causes.sort(key=lambda c: (-SEVERITIES.index(c.severity) if c.severity in SEVERITIES else 1,
                               KIND_ORDER.get(kind(c.finding), 7), _start(c.finding) or 0.0))
    taken = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in remedies]
    return Diagnosis(causes, run_id, taken, steps)


def of_result(result: Any) -> Diagnosis:
    """The story of a run's result (a :class:`~gdlab.loop.Result`): its ``diagnosis``, else (a result made without
    one) built from its findings, remedies, run id and steps by :func:`explain`.

    Example:
        >>> from types import SimpleNamespace
        >>> report = SimpleNamespace(findings=[], remedies=[], run_id="r1", steps=12, diagnosis=None)
        >>> of_result(report).run_id, of_result(report).steps
        ('r1', 12)
    """
    story = getattr(result, "diagnosis", None)
    if isinstance(story, Diagnosis):
        return story
    return explain(result.findings, run_id=getattr(result, "run_id", None), remedies=getattr(result, "remedies", ()),
                   steps=getattr(result, "steps", None))


# -- the one printer -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    """One printed line of a story: its ``text`` (indented), what it is (``kind``: header, applied, cause,
    consequence, evidence, remedy, why, because, none) and the ``severity`` of a cause or consequence line (for a
    console's colour). ``str(line)`` is its text.

    Example:
        >>> str(Line("    remedy:   set_lr (lr 0.1)", "remedy"))
        '    remedy:   set_lr (lr 0.1)'
    """

    text: str
    kind: str
    severity: str | None = None

    def __str__(self) -> str:
        return self.text


def _number(value: Any) -> str:
    """A value of the evidence or a remedy as text: a float in 4 significant digits, a dict as ``{key value ...}``
    (keys sorted, as a stored run's come back)."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_number(value[k])}" for k in sorted(value, key=str)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return str(value)


def remedy_text(remedy: Any) -> str:
    """A remedy as ``action (key value, ...)`` (keys sorted, numbers in 4 significant digits).

    Example:
        >>> remedy_text({"action": "set_lr", "lr": 0.0031415})
        'set_lr (lr 0.003142)'
    """
    if not remedy:
        return ""
    if not isinstance(remedy, dict):
        return str(remedy)
    rest = ", ".join(f"{k} {_number(remedy[k])}" for k in sorted(remedy, key=str) if k != "action")
    return f"{remedy.get('action', '')}" + (f" ({rest})" if rest else "")


def _wrap(head: str, text: str, width: int = 116) -> list[str]:
    """``head`` then ``text``, cut at spaces into lines of at most ``width`` characters, the later lines indented to
    where the text began."""
    lines, now = [], head
    for word in text.split():
        if now.strip() and len(now) + 1 + len(word) > width and len(now) > len(head):
            lines.append(now)
            now = " " * len(head) + word
        else:
            now = f"{now}{'' if now == head else ' '}{word}"
    return [*lines, now]


def finding_lines(finding: Any, depth: int = 0, *, remedy: bool = True, because: str | None = None) -> list[Line]:
    """One finding as the story prints it: ``severity code (step N): explanation``, its evidence and (for a cause)
    its remedy, and why its cause explains it (``because``, for a consequence); indented ``depth`` levels.

    Example:
        >>> [str(x) for x in finding_lines(Finding("plateau", "warning", 40, {"loss": 0.7}, "flat",
        ...                                           {"action": "set_lr", "lr": 0.3}))]
        ['warning plateau (step 40): flat', '    evidence: loss 0.7', '    remedy:   set_lr (lr 0.3)']
    """
    f = _as_finding(finding)
    pad = "  " * depth * 3 if depth else ""
    step = f.step
    at = f" (step {int(step)})" if isinstance(step, (int, float)) and not isinstance(step, bool) and \
        math.isfinite(step) else ""
    out = [Line(f"{pad}{f.severity} {f.code}{at}: {f.explanation}", "consequence" if depth else "cause",
                f.severity)]
    evidence = f.evidence if isinstance(f.evidence, dict) else {}
    if evidence:
        out.append(Line(f"{pad}    evidence: " + ", ".join(f"{k} {_number(evidence[k])}" for k in sorted(evidence)),
                        "evidence"))
    if remedy and f.remedy:
        out.append(Line(f"{pad}    remedy:   {remedy_text(f.remedy)}", "remedy"))
    if because:
        out.extend(Line(text, "why") for text in _wrap(f"{pad}    why: ", because))
    return out


def _consequence_lines(consequences: Sequence[Consequence], depth: int) -> list[Line]:
    if not consequences:
        return []
    out = [Line("  " * (depth - 1) * 3 + "    because of this:", "because")]
    for c in consequences:
        out += finding_lines(c.finding, depth, remedy=False, because=c.because)
        out += _consequence_lines(c.consequences, depth + 1)
    return out


def cause_lines(cause: Cause) -> list[Line]:
    """One root cause as the story prints it: the finding, its evidence and remedy, then ``because of this:`` and
    each consequence (nested), with why the cause explains it."""
    return finding_lines(cause.finding) + _consequence_lines(cause.consequences, 1)


def story_lines(diagnosis: Diagnosis, *, undiagnosed: str | None = None) -> list[Line]:
    """The story as lines: the remedies applied during the run, a header (how many root causes and findings, the
    run's id), then each root cause with its evidence and remedy and, beneath, what it explains. With no findings,
    one line: ``undiagnosed`` (why the doctor did not read the run) when given, else "no findings".

    Pure (no console): the CLI colours these lines, the callbacks print them, TensorBoard and the report show
    them.

    Example:
        >>> [str(x) for x in story_lines(explain([], run_id="r1", steps=80))]
        ['gdlab doctor: no findings in 80 steps (run r1)']
    """
    run = f" (run {diagnosis.run_id})" if diagnosis.run_id else ""
    steps = f" in {diagnosis.steps} steps" if diagnosis.steps is not None else ""
    out = []
    for r in diagnosis.remedies:
        params = r.get("params")
        shown = " (" + ", ".join(f"{k} {_number(v)}" for k, v in params.items()) + ")" \
            if isinstance(params, dict) and params else ""
        out.append(Line(f"remedy applied at step {r.get('step')}: {r.get('action')}{shown} - {r.get('reason')}",
                        "applied"))
    if not diagnosis.causes:
        return [*out, Line(f"gdlab doctor: {undiagnosed or 'no findings' + steps}{run}", "none")]
    n, total = len(diagnosis.causes), len(diagnosis.findings())
    out.append(Line(f"gdlab doctor: {total} finding{'s' if total != 1 else ''}{steps}, {n} root cause"
                    f"{'s' if n != 1 else ''}{run}", "header"))
    for cause in diagnosis.causes:
        out += cause_lines(cause)
    return out


def report_text(result: Any) -> str:
    """A run's result as the callbacks print it at the end of training: :func:`story_lines` of its story
    (:func:`of_result`), then why the run stopped early (if it did), each line's text as text (control characters
    escaped: :func:`gdlab.guard.printable`).

    Example:
        >>> from types import SimpleNamespace
        >>> print(report_text(SimpleNamespace(findings=[], steps=40, stop_reason=None)))
        gdlab doctor: no findings in 40 steps
    """
    lines = [str(line) for line in story_lines(of_result(result))]
    stop = getattr(result, "stop_reason", None)
    if stop:
        lines.append(f"stopped early: {stop}")
    return "\n".join(printable(line) for line in lines)
