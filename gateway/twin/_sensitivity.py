"""Finite-difference sensitivities from batched AC solves, and the linear limit estimates they give.

Owns :func:`linear_step` (how far a scenario can move along a direction before a linearised constraint binds),
:func:`jacobian` (per-DER sensitivities of every constrained quantity from a base row and one perturbed row
per DER) and :func:`with_ders` (a feeder with other DER connection points, e.g. the envelope holders named on
the command line). The sensitivities come from ONE batched AC solve of finite-difference scenarios at the
operating point (the base and one perturbation per direction or per DER): no Jacobian assembly, and the
voltage-dependent loads and the transformer are in them. The linear estimates are a first guess only: the
envelope is always corrected and certified with AC solves (:mod:`gateway.twin._envelope`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.twin._errors import FeederError, FeederIssue
from gateway.twin._feeder import Ders, Feeder
from gateway.twin._validate import assert_valid_feeder

FloatArray = NDArray[np.float64]


def linear_step(x0: FloatArray, x1: FloatArray, step: FloatArray, lower: FloatArray,
                upper: FloatArray) -> tuple[FloatArray, NDArray[np.intp]]:
    """The linear estimate of the largest level per line.

    ``x0``/``x1`` ``(M, n_obs)``: the constrained quantities at level 0 and at level ``step`` ``(M,)`` along
    each line; ``lower``/``upper`` ``(n_obs,)`` their limits (NaN quantities are unconstrained). Returns the
    level ``(M,)`` where the first linearised quantity reaches its limit (0 if one is already past it, inf if
    none ever does) and that quantity's index (-1: none).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (x1 - x0) / step[:, None]
        t = np.where(slope > 0, (upper - x0) / slope, np.where(slope < 0, (lower - x0) / slope, np.inf))
    t = np.where(np.isnan(t), np.inf, np.maximum(t, 0.0))
    if not t.shape[1]:
        return np.full(x0.shape[0], np.inf), np.full(x0.shape[0], -1, dtype=np.intp)
    index = t.argmin(axis=1)
    level = t[np.arange(t.shape[0]), index]
    return level, np.where(np.isfinite(level), index, -1)


def jacobian(x0: FloatArray, x: FloatArray, step: FloatArray) -> FloatArray:
    """Sensitivities ``(n_obs, n)`` of the quantities ``x0`` ``(n_obs,)`` to ``n`` inputs, from the quantities
    ``x`` ``(n, n_obs)`` with input ``i`` moved by ``step[i]`` (NaN quantities give 0)."""
    sens = (x - x0[None, :]) / step[:, None]
    result: FloatArray = np.nan_to_num(sens, nan=0.0, posinf=0.0, neginf=0.0).T
    return result


def with_ders(feeder: Feeder, name: ArrayLike, bus: ArrayLike, *, phase: ArrayLike | None = None,
              rating_w: ArrayLike | None = None, keep: bool = False) -> Feeder:
    """``feeder`` with these DER connection points in place of its own (``keep``: after its own).

    ``bus``: bus names or indices; ``phase`` default three-phase; ``rating_w`` default unknown (NaN). Validated:
    an unknown bus, a repeated name or a bad rating raises :class:`FeederError` naming the DER."""
    names = np.array([str(n) for n in np.asarray(name, dtype=object).ravel()], dtype=np.str_)
    raw = np.asarray(bus, dtype=object).ravel()
    if any(isinstance(b, str) for b in raw):
        lookup = feeder.bus_lookup()
        unknown = [(str(n), str(b)) for n, b in zip(names, raw, strict=True) if str(b) not in lookup]
        if unknown:
            raise FeederError([FeederIssue("der", "bus", (n,), f"unknown bus {b!r}") for n, b in unknown],
                              feeder.name)
        index = np.array([lookup[str(b)] for b in raw], dtype=np.int64)
    else:
        index = np.asarray(raw, dtype=np.int64)
    new = Ders.create(name=names, bus=index, phase=phase, rating_w=rating_w)
    if keep:
        old = feeder.ders
        new = Ders(np.concatenate([old.name, new.name]), np.concatenate([old.bus, new.bus]),
                   np.concatenate([old.phase, new.phase]), np.concatenate([old.rating_w, new.rating_w]))
    result = dataclasses.replace(feeder, ders=new)
    assert_valid_feeder(result)
    return result
