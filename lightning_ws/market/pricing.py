"""Valuation and pricing of parameter trades (Train 'n Trade, arXiv 2312.04740).

The reference code (SprocketLab/parameter-market) has no prices: a buyer buys whenever the broker-measured gain is
positive. The paper's Sections 3-4 describe valuations, reservation prices and bargaining, whose text we could not
read; the rules below follow the specification in ``shared/specs/parameter_market.md`` §4.2 and are marked there as
*unverified against the PDF*:

* gain from trade ``Delta = (l(theta_A) - min_alpha l(theta_A(alpha))) / l(theta_A)`` (relative loss reduction on the
  buyer's validation split, never the test split);
* buyer valuation ``v = value_per_gain * max(Delta, 0)`` (money per unit of relative loss reduction);
* seller reservation price ``c = asking_price + competition * max(Delta, 0)`` (a competitor's gain costs the seller);
* rules:

  - ``"gain"``: the reference rule, buy iff ``Delta > min_gain``, price 0;
  - ``"posted"``: the seller's asking price is the price; buy iff ``Delta > min_gain`` and ``v >= asking_price``;
  - ``"nash"``: buy iff ``Delta > min_gain`` and ``v >= c``; price ``c + beta * (v - c)`` (``beta = 0.5`` is the Nash
    bargaining split ``argmax_p (v - p)(p - c)``; other ``beta`` give a general split).

A purchase also needs the price to fit in the remaining budget. Everything here is plain Python (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from lightning_ws.errors import ConfigError

__all__ = ["PRICING_RULES", "Quote", "PricingRule", "relative_gain", "best_alpha", "default_alpha_grid"]

PRICING_RULES = ("gain", "posted", "nash")


def default_alpha_grid() -> list[float]:
    """The paper code's grid ``{0.05, 0.15, ..., 0.95}``."""
    return [round(0.05 + 0.1 * i, 2) for i in range(10)]


def relative_gain(loss_before: float, loss_after: float) -> float:
    """``(loss_before - loss_after) / loss_before`` (0 when ``loss_before`` is 0 or either loss is not finite)."""
    if not (math.isfinite(loss_before) and math.isfinite(loss_after)) or loss_before <= 0:
        return 0.0
    return (loss_before - loss_after) / loss_before


def best_alpha(alphas: Sequence[float], losses: Sequence[float]) -> tuple[float, float]:
    """``(alpha*, loss(alpha*))``: the smallest finite loss on the grid (the first on ties); ``(nan, inf)`` if none."""
    best = (float("nan"), float("inf"))
    for a, loss in zip(alphas, losses):
        if math.isfinite(loss) and loss < best[1]:
            best = (float(a), float(loss))
    return best


@dataclass(frozen=True)
class Quote:
    """The outcome of pricing one offer for one buyer."""

    gain: float
    value: float
    reservation: float
    price: float
    accept: bool
    reason: str

    def to_dict(self) -> dict[str, float | bool | str]:
        return asdict(self)


class PricingRule:
    """Buyer valuation, seller reservation price and the trade rule (see the module docstring).

    Args:
        rule: ``"gain"`` (reference: buy iff the gain is positive, no payment), ``"posted"`` or ``"nash"``.
        value_per_gain: money per unit of relative loss reduction (``rho``; default 1.0: the price is in units of
            relative loss reduction).
        beta: the buyer's share of the surplus goes to ``1 - beta``; the price is ``c + beta (v - c)``; 0.5 = Nash.
        competition: ``gamma``: how much the seller's reservation price grows with the buyer's gain (0: none).
        min_gain: buy only when the gain exceeds this (default 0, the reference rule ``Delta > 0``).
    """

    def __init__(self, rule: str = "gain", value_per_gain: float = 1.0, beta: float = 0.5, competition: float = 0.0,
                 min_gain: float = 0.0) -> None:
        if rule not in PRICING_RULES:
            raise ConfigError(f"pricing rule must be one of {PRICING_RULES}, got {rule!r}.")
        if not (value_per_gain > 0 and math.isfinite(value_per_gain)):
            raise ConfigError(f"value_per_gain must be a positive number, got {value_per_gain!r}.")
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"beta must be in [0, 1] (0.5 = Nash split), got {beta!r}.")
        if not (competition >= 0 and math.isfinite(competition)) or not math.isfinite(min_gain):
            raise ConfigError(f"need competition >= 0 and a finite min_gain, got {competition!r}, {min_gain!r}.")
        self.rule, self.value_per_gain, self.beta = rule, float(value_per_gain), float(beta)
        self.competition, self.min_gain = float(competition), float(min_gain)

    def quote(self, gain: float, asking_price: float, budget_left: float) -> Quote:
        """Price an offer whose measured gain for the buyer is ``gain``."""
        g = max(float(gain), 0.0) if math.isfinite(gain) else 0.0
        value = self.value_per_gain * g
        if self.rule == "gain":
            reservation, price = 0.0, 0.0
        elif self.rule == "posted":
            reservation = price = float(asking_price)
        else:
            reservation = float(asking_price) + self.competition * g
            price = reservation + self.beta * max(value - reservation, 0.0)
        if not gain > self.min_gain:
            return Quote(float(gain), value, reservation, price, False, "no gain")
        if value < reservation:
            return Quote(float(gain), value, reservation, price, False, "value below the seller's price")
        if price > budget_left + 1e-12:
            return Quote(float(gain), value, reservation, price, False, "over budget")
        return Quote(float(gain), value, reservation, price, True, "accepted")
