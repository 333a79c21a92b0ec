"""A verifier-data suite for Weaver (arXiv 2506.18203): synthetic sets that stress what real verifier data does.

Each set draws ``P`` problems x ``N`` candidates with a per-problem correct rate ``r_p ~ Beta(m c, (1 - m) c)``
(``m`` = the set's mean correct rate, anywhere in 0.02-0.98; ``c`` = concentration, default 2: easy and hard problems
mixed). Correct candidates share the answer ``"c"``; wrong ones draw one of ``num_wrong`` distractors with skewed
per-problem popularity (``Dirichlet(distractor_concentration)``, default 0.5; larger = wrong answers spread evenly,
so majority vote gets stronger), so majority vote is informative but fooled on hard problems (``num_wrong``
3 = four-option multiple choice; 20 = free-form math).

Verifiers come in **groups** (:class:`GroupSpec`). Member ``j`` of group ``g`` scores candidate ``c`` with latent

    z = strength_g * y_c + sqrt(shared_g) * e_{c,g} + sqrt(answer_g) * a_{answer(c),g} + sqrt(1 - shared_g) * eps_{c,g,j}

(``e``, ``a``, ``eps`` standard normal): ``shared`` is how much the members agree beyond the label (0 = conditionally
independent; 0.9 = near-duplicate reward models), ``answer`` is a per-(problem, answer) component (a verifier fooled
the same way by every candidate with one wrong answer). ``leniency`` (default 0) adds ``leniency * u_{p,g}`` (``u``
standard normal per problem): a verifier more lenient on some problems than on others, shifting every candidate of
the problem alike. The reported score is

* ``kind="reward_model"``: ``offset + scale * z`` on a random native scale;
* ``kind="judge_verdict"``: one Bernoulli draw of ``sigmoid(z + bias)`` per member (repeated draws of one judge: use
  ``shared=1``, the members then differ only by the sampling of the verdict);
* ``kind="judge_prob"``: ``sigmoid(z + bias)`` (a score in [0, 1]).

A fraction ``missing`` of all scores is set to ``NaN``. :data:`SUITE` names the sets used by tests and benchmarks;
:func:`make_suite_set` draws one at any size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lightning_ws.errors import ConfigError
from lightning_ws.weaver.data import VerificationData

__all__ = ["SUITE", "GroupSpec", "SetSpec", "make_set", "make_suite_set"]

_KINDS = ("reward_model", "judge_verdict", "judge_prob")


@dataclass(frozen=True)
class GroupSpec:
    """A group of ``copies`` verifiers (see the module docstring for the score model)."""

    strength: float
    copies: int = 1
    shared: float = 0.0
    answer: float = 0.2
    kind: str = "reward_model"
    bias: float = 0.0
    name: str = ""
    leniency: float = 0.0

    def __post_init__(self) -> None:
        if not self.leniency >= 0.0:
            raise ConfigError(f"GroupSpec.leniency must be >= 0 (a standard deviation), got {self.leniency}.")
        if self.kind not in _KINDS:
            raise ConfigError(f"GroupSpec.kind must be one of {_KINDS}, got {self.kind!r}.")
        if self.copies < 1 or not 0.0 <= self.shared <= 1.0 or not 0.0 <= self.answer <= 1.0:
            raise ConfigError("GroupSpec needs copies >= 1 and shared, answer in [0, 1].")


@dataclass(frozen=True)
class SetSpec:
    """One synthetic verifier-data set: mean correct rate, answer space, verifier groups, missing rate."""

    correct_rate: float
    groups: tuple[GroupSpec, ...]
    num_wrong: int = 20
    concentration: float = 2.0
    distractor_concentration: float = 0.5
    missing: float = 0.0
    num_problems: int = 500
    num_candidates: int = 32
    note: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 0.0 < self.correct_rate < 1.0:
            raise ConfigError(f"correct_rate must lie in (0, 1), got {self.correct_rate}.")
        if not self.groups:
            raise ConfigError("a SetSpec needs at least one verifier group.")
        if self.num_wrong < 1 or not 0.0 <= self.missing < 1.0:
            raise ConfigError("num_wrong must be >= 1 and missing in [0, 1).")


def _independent(strengths: tuple[float, ...]) -> tuple[GroupSpec, ...]:
    return tuple(GroupSpec(s, name=f"rm{i}") for i, s in enumerate(strengths))


_MIXED = (1.6, 1.2, 1.0, 0.8, 0.5, 0.3)
_CORRELATED = (GroupSpec(0.5, copies=6, shared=0.9, name="dup"),
               GroupSpec(1.4, name="rmA"), GroupSpec(1.1, name="rmB"), GroupSpec(0.9, name="rmC"))

#: The named sets of the suite. Sizes are the benchmark defaults; tests draw them smaller.
SUITE: dict[str, SetSpec] = {
    "rate_0.05": SetSpec(0.05, _independent(_MIXED), note="hard set, 5% correct, 6 independent verifiers"),
    "rate_0.20": SetSpec(0.20, _independent(_MIXED), note="20% correct"),
    "rate_0.50": SetSpec(0.50, _independent(_MIXED), note="50% correct"),
    "rate_0.80": SetSpec(0.80, _independent(_MIXED), note="80% correct"),
    "rate_0.95": SetSpec(0.95, _independent(_MIXED), note="easy set, 95% correct"),
    "weak_verifiers": SetSpec(0.35, _independent((0.3, 0.25, 0.2, 0.15)), note="verifiers nearly useless"),
    "correlated": SetSpec(0.30, _CORRELATED, tags=("correlated",),
                          note="6 near-duplicate weak verifiers + 3 independent stronger ones"),
    "correlated_hard": SetSpec(0.10, _CORRELATED, tags=("correlated",), note="as correlated, 10% correct"),
    "judge_draws": SetSpec(0.35, (GroupSpec(1.2, copies=32, shared=1.0, answer=0.3, kind="judge_verdict",
                                            name="judge"),),
                           num_wrong=3, missing=0.01, num_problems=64, num_candidates=64, tags=("correlated",),
                           note="4-option MC, one judge x 32 sampled verdicts, 1% missing (64 x 64)"),
    "judge_draws_prob": SetSpec(0.15, (GroupSpec(1.0, copies=32, shared=1.0, answer=0.3, kind="judge_prob",
                                                 name="judge"),),
                                num_wrong=3, missing=0.01, num_problems=64, num_candidates=64, tags=("correlated",),
                                note="hard MC, one judge x 32 draws of a [0, 1] score, 1% missing (64 x 64)"),
    "judge_vs_majority": SetSpec(0.35, (GroupSpec(0.5, copies=32, shared=1.0, answer=0.3, kind="judge_verdict",
                                                  name="judge"),),
                                 num_wrong=3, missing=0.01, num_problems=64, num_candidates=64,
                                 distractor_concentration=5.0, tags=("correlated",),
                                 note="as judge_draws with a weak judge and evenly spread wrong answers: majority "
                                      "vote about as good as the mean judge (the regime issue 17 reports)"),
    "judges_and_rms": SetSpec(0.25, (GroupSpec(1.0, copies=16, shared=1.0, kind="judge_verdict", name="judgeA"),
                                     GroupSpec(0.7, copies=16, shared=1.0, kind="judge_verdict", bias=1.0,
                                               name="judgeB"),
                                     GroupSpec(1.2, name="rm0"), GroupSpec(0.6, name="rm1"),
                                     GroupSpec(0.4, copies=3, shared=0.9, name="rmdup")),
                              missing=0.01, tags=("correlated",),
                              note="2 judges x 16 verdicts + 1 RM + 3 near-duplicate weak RMs + 1 weak RM"),
}


def make_set(spec: SetSpec, *, num_problems: int | None = None, num_candidates: int | None = None,
             seed: int = 0) -> VerificationData:
    """Draw one :class:`VerificationData` (with labels) from ``spec``; sizes default to the spec's."""
    rng = np.random.default_rng(seed)
    P = int(num_problems or spec.num_problems)
    N = int(num_candidates or spec.num_candidates)
    if P < 1 or N < 1:
        raise ConfigError("num_problems and num_candidates must be >= 1.")
    m, c = spec.correct_rate, spec.concentration
    rate = rng.beta(m * c, (1.0 - m) * c, size=P)
    y = rng.random((P, N)) < rate[:, None]
    popularity = rng.dirichlet(np.full(spec.num_wrong, spec.distractor_concentration), size=P)
    wrong = np.stack([rng.choice(spec.num_wrong, size=N, p=popularity[p]) for p in range(P)])
    aid = np.where(y, 0, wrong + 1)  # answer code per problem: 0 = correct
    answers = [["c" if a == 0 else f"w{a - 1}" for a in row] for row in aid]
    cols, names, kinds = [], [], []
    for g_i, g in enumerate(spec.groups):
        e = rng.standard_normal((P, N))
        a = rng.standard_normal((P, spec.num_wrong + 1))[np.arange(P)[:, None], aid]
        base = g.strength * y + np.sqrt(g.shared) * e + np.sqrt(g.answer) * a
        if g.leniency > 0:  # drawn only when asked for, so the sets without it are unchanged
            base = base + g.leniency * rng.standard_normal(P)[:, None]
        scale, offset = rng.uniform(0.5, 5.0), rng.uniform(-3.0, 3.0)
        gname = g.name or f"g{g_i}"
        for j in range(g.copies):
            z = base + np.sqrt(1.0 - g.shared) * rng.standard_normal((P, N))
            if g.kind == "reward_model":
                s = offset + scale * z
            else:
                q = 1.0 / (1.0 + np.exp(-(z - 0.5 * g.strength + g.bias)))
                s = (rng.random((P, N)) < q).astype(np.float64) if g.kind == "judge_verdict" else q
            cols.append(s)
            names.append(gname if g.copies == 1 else f"{gname}_{j}")
            kinds.append("reward_model" if g.kind == "reward_model" else "judge")
    scores = np.stack(cols, axis=2)
    if spec.missing > 0:
        scores[rng.random(scores.shape) < spec.missing] = np.nan
        for v in range(scores.shape[2]):  # keep every verifier with at least one score
            if np.isnan(scores[:, :, v]).all():
                scores[0, 0, v] = 0.0
    return VerificationData(scores=scores, answers=answers, verifier_names=names, verifier_kinds=kinds, correct=y)


def make_suite_set(name: str, *, num_problems: int | None = None, num_candidates: int | None = None,
                   seed: int = 0) -> VerificationData:
    """Draw the named :data:`SUITE` set."""
    if name not in SUITE:
        raise ConfigError(f"unknown suite set {name!r}; choose from {sorted(SUITE)}.")
    return make_set(SUITE[name], num_problems=num_problems, num_candidates=num_candidates, seed=seed)
