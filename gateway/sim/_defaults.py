"""Plausible starting values for the SunSpec models a simulated device holds (engineering units).

The physics overwrites the measurements on the first update; what matters here is the layout (scale factors,
counts, repeating groups) and sensible settings: a 5 kW inverter, 230 V / 50 Hz for the 1xx models and
240 V / 60 Hz for the IEEE 1547-2018 aligned 7xx models, IEEE 1547 category B volt-var curves.
"""

from __future__ import annotations

from typing import Any

from gateway.sunspec import GroupDef, model_def

#: The rating every default describes, in W (and VA); vars are 44 % of it (IEEE 1547 category B).
RATED_W = 5000
RATED_VAR = 2200

#: IEEE 1547-2018 Table 8, category B default volt-var curve as (V % of VRef, Q % of VArMax): the standard's
#: Q1 = 44 % of nameplate apparent power is 100 % of the default VArMax (44 % of the VA rating).
CAT_B_CURVE = ((92.0, 100.0), (98.0, 0.0), (102.0, 0.0), (108.0, -100.0))


def common_values(serial: str) -> dict[str, Any]:
    """Model 1 (common): who the simulated device says it is."""
    return {"Mn": "gridedge", "Md": "sim", "Opt": "simulated", "Vr": "0.1.0", "SN": serial, "DA": 1}


def _inverter_1xx(phases: int) -> dict[str, Any]:
    v = {
        "A": 0.0, "AphA": 0.0, "A_SF": -2, "PhVphA": 230.0, "V_SF": -1, "W": 0, "W_SF": 0, "Hz": 50.0,
        "Hz_SF": -2, "VA": 0, "VA_SF": 0, "VAr": 0, "VAr_SF": 0, "PF": 100.0, "PF_SF": -1, "WH": 1, "WH_SF": 0,
        "DCA": 0.0, "DCA_SF": -2, "DCV": 400.0, "DCV_SF": -1, "DCW": 0, "DCW_SF": 0, "TmpCab": 25.0,
        "Tmp_SF": -1, "St": 2, "Evt1": 0, "Evt2": 0,
    }
    if phases >= 2:
        v |= {"AphB": 0.0, "PhVphB": 230.0, "PPVphAB": 400.0 if phases == 3 else 460.0}
    if phases == 3:
        v |= {"AphC": 0.0, "PhVphC": 230.0, "PPVphBC": 400.0, "PPVphCA": 400.0}
    return v


def _volt_var_126() -> dict[str, Any]:
    curve: dict[str, Any] = {"ActPt": 4, "DeptRef": 2, "CrvNam": "cat-b", "RmpTms": 0, "ReadOnly": 0}
    for i, (v, q) in enumerate(CAT_B_CURVE, start=1):
        curve[f"V{i}"] = v
        curve[f"VAr{i}"] = q
    return {
        "ActCrv": 1, "ModEna": 1, "WinTms": 0, "RvrtTms": 0, "RmpTms": 0, "NCrv": 2, "NPt": 4, "V_SF": 0,
        "DeptRef_SF": 0, "RmpIncDec_SF": 0, "curve": [curve, {**curve, "CrvNam": "spare"}],
    }


def _volt_var_705() -> dict[str, Any]:
    def crv(read_only: int) -> dict[str, Any]:
        return {
            "ActPt": 4, "DeptRef": 1, "Pri": 1, "VRef": 100.0, "VRefAuto": 100.0, "VRefAutoEna": 0,
            "VRefAutoTms": 0, "RspTms": 5.0, "ReadOnly": read_only,
            "Pt": [{"V": v, "Var": q} for v, q in CAT_B_CURVE],
        }

    return {
        "Ena": 1, "AdptCrvReq": 0, "AdptCrvRslt": 1, "NPt": 4, "NCrv": 3, "RvrtTms": 0, "RvrtRem": 0,
        "RvrtCrv": 2, "V_SF": -2, "DeptRef_SF": -2, "RspTms_SF": -1, "Crv": [crv(1), crv(0), crv(0)],
    }


def _bits(model_id: int, point: str, names: tuple[str, ...]) -> int:
    """A bitfield value with the named bits set (bit positions from the model's symbols)."""
    symbols = dict(model_def(model_id).root.point(point).symbols)
    return sum(1 << symbols[n] for n in names)


_STATIC: dict[int, Any] = {
    120: lambda: {
        "DERTyp": 4, "WRtg": RATED_W, "WRtg_SF": 0, "VARtg": RATED_W, "VARtg_SF": 0, "VArRtgQ1": RATED_VAR,
        "VArRtgQ2": RATED_VAR, "VArRtgQ3": -RATED_VAR, "VArRtgQ4": -RATED_VAR, "VArRtg_SF": 0, "ARtg": 25.0,
        "ARtg_SF": -1, "PFRtgQ1": -0.8, "PFRtgQ2": 0.8, "PFRtgQ3": -0.8, "PFRtgQ4": 0.8, "PFRtg_SF": -2,
        "WHRtg_SF": 0, "AhrRtg_SF": 0, "MaxChaRte_SF": 0, "MaxDisChaRte_SF": 0,
    },
    121: lambda: {
        "WMax": RATED_W, "VRef": 230, "VRefOfs": 0, "VMax": 253, "VMin": 207, "VAMax": RATED_W,
        "VArMaxQ1": RATED_VAR, "VArMaxQ2": RATED_VAR, "VArMaxQ3": -RATED_VAR, "VArMaxQ4": -RATED_VAR,
        "VArAct": 1, "ClcTotVA": 1, "ECPNomHz": 50.0, "WMax_SF": 0, "VRef_SF": 0, "VRefOfs_SF": 0,
        "VMinMax_SF": 0, "VAMax_SF": 0, "VArMax_SF": 0, "WGra_SF": 0, "PFMin_SF": -2, "MaxRmpRte_SF": 0,
        "ECPNomHz_SF": -2,
    },
    122: lambda: {
        "PVConn": 7, "ECPConn": 1, "ActWh": 1, "ActVAh": 1, "VArAval": RATED_VAR, "VArAval_SF": 0,
        "WAval": 0, "WAval_SF": 0, "StSetLimMsk": 0, "StActCtl": 0, "TmSrc": "RTC", "Tms": 0, "RtSt": 0,
        "Ris_SF": 0,
    },
    123: lambda: {
        "Conn_WinTms": 0, "Conn_RvrtTms": 0, "Conn": 1, "WMaxLimPct": 100.0, "WMaxLimPct_WinTms": 0,
        "WMaxLimPct_RvrtTms": 0, "WMaxLimPct_RmpTms": 0, "WMaxLim_Ena": 0, "OutPFSet": 1.0, "OutPFSet_WinTms": 0,
        "OutPFSet_RvrtTms": 0, "OutPFSet_RmpTms": 0, "OutPFSet_Ena": 0, "VArWMaxPct": 0, "VArMaxPct": 0,
        "VArAvalPct": 0, "VArPct_WinTms": 0, "VArPct_RvrtTms": 0, "VArPct_RmpTms": 0, "VArPct_Mod": 2,
        "VArPct_Ena": 0, "WMaxLimPct_SF": -1, "OutPFSet_SF": -3, "VArPct_SF": 0,
    },
    124: lambda: {
        "WChaMax": RATED_W, "WChaGra": 100, "WDisChaGra": 100, "StorCtl_Mod": 0, "VAChaMax": RATED_W,
        "MinRsvPct": 10, "ChaState": 50.0, "StorAval": 0.0, "InBatV": 400.0, "ChaSt": 6, "OutWRte": 100.0,
        "InWRte": 100.0, "InOutWRte_WinTms": 0, "InOutWRte_RvrtTms": 0, "InOutWRte_RmpTms": 0, "ChaGriSet": 1,
        "WChaMax_SF": 0, "WChaDisChaGra_SF": 0, "VAChaMax_SF": 0, "MinRsvPct_SF": 0, "ChaState_SF": -1,
        "StorAval_SF": -1, "InBatV_SF": -1, "InOutWRte_SF": -1,
    },
    126: _volt_var_126,
    160: lambda: {
        "DCA_SF": -2, "DCV_SF": -1, "DCW_SF": 0, "DCWH_SF": 0, "Evt": 0, "N": 2, "TmsPer": 0,
        "module": [
            {"ID": i, "IDStr": f"PV{i}", "DCA": 0.0, "DCV": 380.0, "DCW": 0, "DCWH": 1, "Tms": 0, "Tmp": 25,
             "DCSt": 2, "DCEvt": 0}
            for i in (1, 2)
        ],
    },
    203: lambda: {
        "A": 0.0, "AphA": 0.0, "AphB": 0.0, "AphC": 0.0, "A_SF": -2, "PhV": 230.0, "PhVphA": 230.0,
        "PhVphB": 230.0, "PhVphC": 230.0, "PPV": 400.0, "PhVphAB": 400.0, "PhVphBC": 400.0, "PhVphCA": 400.0,
        "V_SF": -1, "Hz": 50.0, "Hz_SF": -2, "W": 0, "WphA": 0, "WphB": 0, "WphC": 0, "W_SF": 0, "VA": 0,
        "VAphA": 0, "VAphB": 0, "VAphC": 0, "VA_SF": 0, "VAR": 0, "VARphA": 0, "VARphB": 0, "VARphC": 0,
        "VAR_SF": 0, "PF": 100.0, "PFphA": 100.0, "PFphB": 100.0, "PFphC": 100.0, "PF_SF": -1, "TotWhExp": 1,
        "TotWhImp": 1, "TotWh_SF": 0, "TotVAh_SF": 0, "TotVArh_SF": 0, "Evt": 0,
    },
    701: lambda: {
        "ACType": 0, "St": 1, "InvSt": 1, "ConnSt": 1, "Alrm": 0, "DERMode": _bits(701, "DERMode", ("GRID_FOLLOWING",)),
        "W": 0, "VA": 0, "Var": 0, "PF": 1.0, "A": 0.0, "LNV": 240.0, "Hz": 60.0, "TotWhInj": 1, "TotWhAbs": 0,
        "TotVarhInj": 0, "TotVarhAbs": 0, "TmpAmb": 25.0, "TmpCab": 30.0, "WL1": 0, "VAL1": 0, "VarL1": 0,
        "PFL1": 1.0, "AL1": 0.0, "VL1": 240.0, "TotWhInjL1": 1, "TotWhAbsL1": 0, "ThrotPct": 100,
        "ThrotSrc": 0, "A_SF": -2, "V_SF": -1, "Hz_SF": -3, "W_SF": 0, "PF_SF": -3, "VA_SF": 0, "Var_SF": 0,
        "TotWh_SF": 0, "TotVarh_SF": 0, "Tmp_SF": -1,
    },
    702: lambda: {
        "WMaxRtg": RATED_W, "WOvrExtRtg": RATED_W, "WOvrExtRtgPF": 0.9, "WUndExtRtg": RATED_W,
        "WUndExtRtgPF": 0.9, "VAMaxRtg": RATED_W, "VarMaxInjRtg": RATED_VAR, "VarMaxAbsRtg": RATED_VAR,
        "VNomRtg": 240.0, "VMaxRtg": 264.0, "VMinRtg": 211.2, "AMaxRtg": 24.0, "PFOvrExtRtg": 0.9,
        "PFUndExtRtg": 0.9, "NorOpCatRtg": 1, "AbnOpCatRtg": 1,
        "CtrlModes": _bits(702, "CtrlModes", ("MAX_W", "FIXED_W", "VOLT_VAR")), "IntIslandCatRtg": 0,
        "WMax": RATED_W, "WMaxOvrExt": RATED_W, "WOvrExtPF": 0.9, "WMaxUndExt": RATED_W, "WUndExtPF": 0.9,
        "VAMax": RATED_W, "VarMaxInj": RATED_VAR, "VarMaxAbs": RATED_VAR, "VNom": 240.0, "VMax": 264.0,
        "VMin": 211.2, "AMax": 24.0, "IntIslandCat": 0, "W_SF": 0, "PF_SF": -3, "VA_SF": 0, "Var_SF": 0,
        "V_SF": -1, "A_SF": -1, "S_SF": 0,
    },
    704: lambda: {
        "PFWInjEna": 0, "PFWInjEnaRvrt": 0, "PFWInjRvrtTms": 0, "PFWInjRvrtRem": 0, "PFWAbsEna": 0,
        "PFWAbsEnaRvrt": 0, "PFWAbsRvrtTms": 0, "PFWAbsRvrtRem": 0, "WMaxLimPctEna": 0, "WMaxLimPct": 100.0,
        "WMaxLimPctRvrt": 100.0, "WMaxLimPctEnaRvrt": 0, "WMaxLimPctRvrtTms": 0, "WMaxLimPctRvrtRem": 0,
        "WSetEna": 0, "WSetMod": 1, "WSet": float(RATED_W), "WSetRvrt": float(RATED_W), "WSetPct": 100.0,
        "WSetPctRvrt": 100.0, "WSetEnaRvrt": 0, "WSetRvrtTms": 0, "WSetRvrtRem": 0, "VarSetEna": 0,
        "VarSetMod": 4, "VarSetPri": 1, "VarSet": 0.0, "VarSetRvrt": 0.0, "VarSetPct": 0.0, "VarSetPctRvrt": 0.0,
        "VarSetEnaRvrt": 0, "VarSetRvrtTms": 0, "VarSetRvrtRem": 0, "WRmp": 100, "WRmpRef": 1, "VarRmp": 100,
        "AntiIslEna": 1, "PF_SF": -3, "WMaxLimPct_SF": -1, "WSet_SF": 0, "WSetPct_SF": -1, "VarSet_SF": 0,
        "VarSetPct_SF": -1, "PFWInj": {"PF": 1.0, "Ext": 0}, "PFWInjRvrt": {"PF": 1.0, "Ext": 0},
        "PFWAbs": {"PF": 1.0, "Ext": 0}, "PFWAbsRvrt": {"PF": 1.0, "Ext": 0},
    },
    705: _volt_var_705,
    802: lambda: {
        "AHRtg": 25, "AHRtg_SF": 0, "WHRtg": 10000, "WHRtg_SF": 0, "WChaRteMax": RATED_W,
        "WDisChaRteMax": RATED_W, "WChaDisChaMax_SF": 0, "SoCMax": 100.0, "SoCMin": 5.0, "SocRsvMax": 100.0,
        "SoCRsvMin": 10.0, "SoC": 50.0, "SoC_SF": -1, "SoH": 100, "SoH_SF": 0, "DoD_SF": 0, "DisChaRte_SF": 0,
        "NCyc": 12, "ChaSt": 6, "LocRemCtl": 0, "Hb": 0, "CtrlHb": 0, "AlmRst": 0, "Typ": 4, "State": 3,
        "Evt1": 0, "Evt2": 0, "V": 400.0, "VMax": 450.0, "VMin": 340.0, "V_SF": -1, "CellVMax": 3.35,
        "CellVMin": 3.3, "CellVAvg": 3.32, "CellV_SF": -3, "A": 0.0, "A_SF": -1, "AChaMax": 12.5,
        "ADisChaMax": 12.5, "AMax_SF": -1, "W": 0, "W_SF": 0, "SetOp": 1,
    },
}


def _generic_group(group: GroupDef) -> dict[str, Any]:
    """Scale factors 0, single sub-groups present (so the model keeps its length), everything else absent."""
    values: dict[str, Any] = {p.name: 0 for p in group.points if p.type == "sunssf"}
    for sub in group.groups:
        if sub.count is None:
            values[sub.name] = _generic_group(sub)
    return values


def default_values(model_id: int) -> dict[str, Any]:
    """Plausible values for model ``model_id`` (a fresh dict; the caller may change it)."""
    if model_id in (101, 102, 103):
        return _inverter_1xx(model_id - 100)
    make = _STATIC.get(model_id)
    if make is not None:
        result: dict[str, Any] = make()
        return result
    return _generic_group(model_def(model_id).root)
