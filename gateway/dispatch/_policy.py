"""Dispatch policy: the authority ranking, per-DER customer limits and the default envelope, from ``[dispatch]``.

Built once from the configuration (:meth:`DispatchPolicy.from_config`) or in code; frozen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.config import DispatchConfig
from gateway.dispatch._clamp import Bound
from gateway.types import Authority, DerLimit


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    """What dispatch may do. ``ranking`` is highest first; the DERs dispatch commands are those with
    ``customer_limits``; ``default_limits`` holds the default envelope for each of them."""

    ranking: tuple[Authority, ...]
    customer_limits: Mapping[str, DerLimit]
    default_limits: Mapping[str, DerLimit]
    reversion_s: int = 300  # the longest reversion timer written with a setpoint
    cap_deadband_pct: float = 2.0  # a looser cap is written when it loosens the one held by more (cap_differs)
    default_issuer: str = "config-default"
    _rank: Mapping[Authority, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.ranking)) != len(self.ranking) or not self.ranking:
            raise ValueError(f"ranking {[a.value for a in self.ranking]} must list authorities once each")
        for name, limits in (("customer_limits", self.customer_limits), ("default_limits", self.default_limits)):
            for der_id, lim in limits.items():
                if lim.der_id != der_id:
                    raise ValueError(f"{name}[{der_id!r}] holds the limits of {lim.der_id!r}")
                for value in (lim.export_w, lim.import_w):
                    if not (math.isfinite(value) and value >= 0):
                        raise ValueError(f"{name}[{der_id!r}]: {value!r} is not a finite magnitude >= 0")
        missing = sorted(set(self.customer_limits) - set(self.default_limits))
        if missing:
            raise ValueError(f"no default envelope limits for {missing}")
        if self.reversion_s < 1:
            raise ValueError(f"reversion_s {self.reversion_s} must be at least 1 s")
        if not (math.isfinite(self.cap_deadband_pct) and 0 <= self.cap_deadband_pct <= 20):
            raise ValueError(f"cap_deadband_pct {self.cap_deadband_pct!r} must be within 0..20 %")
        object.__setattr__(self, "customer_limits", MappingProxyType(dict(self.customer_limits)))
        object.__setattr__(self, "default_limits", MappingProxyType(dict(self.default_limits)))
        object.__setattr__(self, "_rank", MappingProxyType({a: i for i, a in enumerate(self.ranking)}))

    @classmethod
    def from_config(cls, config: DispatchConfig) -> DispatchPolicy:
        customer = {der: DerLimit(der, lim.export_w, lim.import_w) for der, lim in config.customer_limits.items()}
        default = {}
        for der in customer:
            lim = config.default_envelope.limits_for(der)
            default[der] = DerLimit(der, lim.export_w, lim.import_w)
        return cls(tuple(config.authority_rank), customer, default, config.reversion_s, config.cap_deadband_pct)

    def ranked(self, authority: Authority) -> bool:
        return authority in self._rank

    def customer_bound(self, der_id: str) -> Bound:
        lim = self.customer_limits[der_id]
        return Bound("customer", lim.export_w, lim.import_w)
