"""Small numeric helpers shared by the Weaver modules."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np


def nan_mean(x: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` along ``axis`` where an all-NaN slice gives NaN silently.

    Missing scores are normal in verifier data (a judge that timed out on a problem), so an all-missing slice is
    not an error; numpy's "Mean of empty slice" RuntimeWarning (which ``np.errstate`` does not silence) would only
    confuse users.
    """
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(x, dtype=np.float64), axis=axis)


def quantile_interp(x: np.ndarray, q: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Monotone map through possibly repeated quantiles ``q`` onto levels ``t``: the average of forward and backward
    interpolation, so a value equal to a run of tied quantiles maps to the middle of the run's levels."""
    return 0.5 * (np.interp(x, q, t) - np.interp(-x, -q[::-1], -t[::-1]))


def array_digest(*arrays: np.ndarray) -> bytes:
    """A 16-byte blake2b digest of the arrays' shapes and bytes, in order: a cache key for the data a result depends
    on. The dtype is not hashed: cast to a fixed dtype first where it may vary."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()
