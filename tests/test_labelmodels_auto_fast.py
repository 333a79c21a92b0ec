"""The shortcuts of auto's selection fits reach what the plain fits reach."""

from __future__ import annotations

import numpy as np

from lightning_ws.labelmodels import DawidSkene, MomentMatching, make_regime_label_matrix
from lightning_ws.labelmodels.matrix import collapse_rows


def test_moment_matching_hints_reach_the_same_optimum():
    # A label-free MomentMatching fit starts from its own EM confusions; auto's selection hands it the fold's EM fit
    # instead of letting it refit EM. The objective is not convex (from the majority-vote start the same data gives
    # posteriors up to 0.06 apart), so the hint must reproduce the label-free fit, start included.
    d = make_regime_label_matrix(3000, k=3, m=12, lf_type="mixed", seed=5)
    ds = DawidSkene(3, accelerate=True, seed=0).fit(d.L)
    plain = MomentMatching(3, seed=0).fit(d.L)
    hinted = MomentMatching(3, seed=0)
    hinted._em_conf_hint = ds.lf_confusions
    hinted._collapsed_hint = collapse_rows(d.L) or False
    hinted.fit(d.L, ds.class_balance_)
    assert plain.fit_report_["converged"] and hinted.fit_report_["converged"]
    np.testing.assert_allclose(hinted.predict_proba(d.L), plain.predict_proba(d.L), atol=1e-5)
    assert "_em_conf_hint" not in hinted.__dict__ and "_collapsed_hint" not in hinted.__dict__
