"""Finite-difference sensitivities from batched AC solves, and the limit estimates they give.

Owns :func:`linear_step` (how far a scenario can move along a direction before a linearised constraint binds),
:func:`quadratic_step` (the same from three levels, each quantity fitted by a quadratic in a power of itself),
:func:`quadratic_estimate` (that, and how uncertain it is), :func:`jacobian` (per-DER sensitivities of every
constrained quantity from a base row and one perturbed row per DER) and :func:`with_ders` (a feeder with other
DER connection points, e.g. the envelope holders named on the command line). The sensitivities come from ONE
batched AC solve of finite-difference scenarios at the operating point (the base and one or two perturbations
per direction, or one per DER): no Jacobian assembly, and the voltage-dependent loads and the transformer are in
them. The estimates are a first guess only: the envelope is always corrected and certified with AC solves
(:mod:`gateway.twin._envelope`).
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


def quadratic_step(t: FloatArray, x: FloatArray, lower: FloatArray, upper: FloatArray,
                   power: FloatArray) -> FloatArray:
    """The quadratic estimate of the largest level per line.

    ``t`` ``(M, 3)``: three distinct levels along each line, the first where the estimate starts from; ``x``
    ``(M, 3, n_obs)`` the constrained quantities solved there; ``lower``/``upper`` ``(n_obs,)`` their limits;
    ``power`` ``(n_obs,)`` or ``(M, n_obs)`` the power each quantity is fitted in (the quantities and finite
    limits are >= 0 where it is not 1). Each ``x ** power`` is taken as the quadratic in the level through the
    three points. Returns the smallest level ``(M,)`` above ``t[:, 0]`` where one reaches its limit (``t[:, 0]``
    if one is already past it there, inf if none does; NaN quantities never do).

    Why powers: at a bus fed through an impedance ``R + jX`` from a voltage ``V0``, drawing ``P + jQ``, the
    voltage solves ``V**4 - (V0**2 - 2 (R P + X Q)) V**2 + (R**2 + X**2)(P**2 + Q**2) = 0``: ``V**4`` is nearly
    quadratic in the power moved (``V`` itself is not), and a current's square is ``|S|**2 / V**2``. Measured on
    random Baran-Wu and European LV cases (the envelope truth tests' generators), from the envelope's levels 0,
    ``s`` and ``2 s`` (``s``: 2 % of the load, all DERs together): voltages to the 4th land a median 0.01 % from
    the AC limit, nine in ten within 0.05 %; fitted as they are, a median 0.1-0.3 %, nine in ten within 1 %; the
    linear estimate is 3-18 % off.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = power if power.ndim == 1 else power[:, None, :]
        z = x**p
        z0 = z[:, 0]
        h1, h2 = t[:, 1:2] - t[:, 0:1], t[:, 2:3] - t[:, 0:1]
        # Newton form in w = level - t0: z(w) = z0 + d1 w + a w (w - h1).
        d1 = (z[:, 1] - z0) / h1
        a = ((z[:, 2] - z[:, 1]) / (h2 - h1) - d1) / h2
        b = d1 - a * h1
        limits = np.stack([np.where(np.isfinite(upper), upper, np.inf) ** power,
                           np.where(np.isfinite(lower), lower**power, -np.inf)])  # (2, [M,] n_obs)
        c = z0 - (limits[:, None, :] if power.ndim == 1 else limits)  # (2, M, n_obs)
        q = -0.5 * (b + np.copysign(np.sqrt(b * b - 4.0 * a * c), b))  # the stable pair of roots: q / a, c / q
        roots = np.concatenate([q / a, c / q])
        w = np.where(roots > 0, roots, np.inf).min(axis=0)  # NaN > 0 is False
        w[(c[0] > 0) | (c[1] < 0)] = 0.0  # already past a limit at t0
    if not w.shape[1]:
        return np.full(t.shape[0], np.inf)
    result: FloatArray = t[:, 0] + w.min(axis=1)
    return result


#: The quadratic estimate's uncertainty as a share of the gap between it (fitted in powers of the quantities) and
#: the quadratic fitted in the quantities themselves (measured: the first typically lands within a twentieth of
#: that gap from the AC limit; loads changing regime beyond the levels solved can put it further, and a search
#: then takes one batch more).
SPREAD = 0.15
#: Lines estimated at once by :func:`quadratic_estimate` (bounds the memory of a search over many buses).
CHUNK = 128


def quadratic_estimate(t: FloatArray, x: FloatArray, lower: FloatArray, upper: FloatArray,
                       power: FloatArray) -> tuple[FloatArray, FloatArray]:
    """:func:`quadratic_step` of each line (quantities fitted in ``power`` ``(n_obs,)``), and its relative
    uncertainty ``(M,)``: ``SPREAD`` times how far the quadratic in the quantities themselves lands from it (NaN
    where there is no estimate)."""
    m = t.shape[0]
    fitted, plain = np.empty(m), np.empty(m)
    for start in range(0, m, CHUNK):
        part = slice(start, start + CHUNK)
        k = t[part].shape[0]
        both = quadratic_step(np.concatenate([t[part], t[part]]), np.concatenate([x[part], x[part]]), lower, upper,
                              np.concatenate([np.broadcast_to(power, (k, power.size)), np.ones((k, power.size))]))
        fitted[part], plain[part] = both[:k], both[k:]
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.abs(plain / fitted - 1.0)
    spread: FloatArray = np.where(np.isfinite(fitted) & (fitted > 0) & np.isfinite(off), SPREAD * off, np.nan)
    return fitted, spread


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
