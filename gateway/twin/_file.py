"""The gridedge feeder file (TOML or JSON, one structure) and the loader that dispatches on the file type.

Owns :func:`load_feeder` (``.toml``/``.json``: a gridedge feeder file; ``.dss``: an OpenDSS master),
:func:`dump_feeder`/:func:`dumps_feeder`, and :func:`feeder_from_dict`/:func:`feeder_to_dict`. The format is
documented in ``gateway/twin/FEEDER_FORMAT.md``. Reading collects every problem (unknown or missing fields,
wrong types, unknown bus names) and the validation issues into one :class:`FeederError`.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gateway.twin._errors import FeederError, FeederIssue
from gateway.twin._feeder import (
    IDEAL_SK_VA,
    Buses,
    Ders,
    Feeder,
    Limits,
    Lines,
    LoadModel,
    Loads,
    Phase,
    Side,
    Source,
    Transformers,
    Winding,
)
from gateway.twin._validate import with_validation

FORMAT = "gridedge-feeder/1"

_PHASES = {"abc": Phase.ABC, "a": Phase.A, "b": Phase.B, "c": Phase.C}
_MODELS = {"pq": LoadModel.PQ, "z": LoadModel.Z, "i": LoadModel.I}
_WINDINGS = {"wye": Winding.WYE, "wye_n": Winding.WYE_N, "delta": Winding.DELTA}
_SIDES = {"from": Side.FROM, "to": Side.TO}

#: Per component: field -> (kind, default). Kinds: "name", "bus", "float", "int", or an enum table.
#: A default of ``None`` marks a required field; ``math.nan`` an optional one that is missing when absent.
_Kind = str | dict[str, Any]
_SCHEMA: dict[str, dict[str, tuple[_Kind, Any]]] = {
    "bus": {"name": ("name", None), "u_rated_v": ("float", None)},
    "line": {
        "name": ("name", None), "from_bus": ("bus", None), "to_bus": ("bus", None), "r1_ohm": ("float", None),
        "x1_ohm": ("float", None), "c1_f": ("float", 0.0), "r0_ohm": ("float", math.nan),
        "x0_ohm": ("float", math.nan), "c0_f": ("float", 0.0), "i_rated_a": ("float", math.nan),
    },
    "transformer": {
        "name": ("name", None), "from_bus": ("bus", None), "to_bus": ("bus", None), "sn_va": ("float", None),
        "u1_v": ("float", None), "u2_v": ("float", None), "uk": ("float", None), "pk_w": ("float", None),
        "i0": ("float", 0.0), "p0_w": ("float", 0.0), "winding_from": (_WINDINGS, "wye_n"),
        "winding_to": (_WINDINGS, "wye_n"), "clock": ("int", 0), "tap_side": (_SIDES, "from"),
        "tap_pos": ("int", 0), "tap_min": ("int", 0), "tap_max": ("int", 0), "tap_nom": ("int", 0),
        "tap_size_v": ("float", 0.0),
    },
    "load": {
        "name": ("name", None), "bus": ("bus", None), "p_w": ("float", None), "q_var": ("float", 0.0),
        "phase": (_PHASES, "abc"), "model": (_MODELS, "pq"), "u_rated_v": ("float", math.nan),
        "vmin_pu": ("float", math.nan), "vmax_pu": ("float", math.nan), "vlow_pu": ("float", math.nan),
        "p_min_w": ("float", math.nan), "p_max_w": ("float", math.nan),
    },
    "der": {"name": ("name", None), "bus": ("bus", None), "phase": (_PHASES, "abc"), "rating_w": ("float", math.nan)},
}
_TABLES: dict[str, Any] = {
    "bus": Buses, "line": Lines, "transformer": Transformers, "load": Loads, "der": Ders,
}
_SOURCE = {"bus": None, "v_pu": 1.0, "sk_va": IDEAL_SK_VA, "rx_ratio": 0.1, "z01_ratio": 1.0}
_LIMITS = {"vmin_pu": Limits().vmin_pu, "vmax_pu": Limits().vmax_pu, "max_loading": Limits().max_loading}
_TOP = {"format", "name", "frequency_hz", "limits", "source", *_SCHEMA}


class _Parser:
    def __init__(self) -> None:
        self.issues: list[FeederIssue] = []
        self.buses: dict[str, int] = {}

    def issue(self, component: str, field: str, name: str, message: str) -> None:
        self.issues.append(FeederIssue(component, field, (name,) if name else (), message))

    def number(self, component: str, field: str, name: str, value: Any, kind: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.issue(component, field, name, f"expected a number, got {value!r}")
            return math.nan
        if kind == "int" and not float(value).is_integer():
            self.issue(component, field, name, f"expected an integer, got {value!r}")
            return 0
        if kind == "int" and not -128 <= value <= 127:  # stored as int8, as power-grid-model's tap positions
            self.issue(component, field, name, f"expected an integer in -128..127, got {value!r}")
            return 0
        return float(value)

    def value(self, component: str, field: str, name: str, value: Any, kind: _Kind) -> Any:
        if isinstance(kind, dict):
            if value not in kind:
                self.issue(component, field, name, f"expected one of {sorted(kind)}, got {value!r}")
                return next(iter(kind.values()))
            return kind[value]
        if kind == "name":
            if not isinstance(value, str | int) or isinstance(value, bool):
                self.issue(component, field, name, f"expected a name, got {value!r}")
            return str(value)
        if kind == "bus":
            index = self.buses.get(str(value))
            if index is None:
                self.issue(component, field, name, f"unknown bus {value!r}")
                return -1
            return index
        return self.number(component, field, name, value, kind)

    def table(self, component: str, rows: Any) -> Any:
        schema = _SCHEMA[component]
        if rows is None:
            rows = []
        if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
            self.issue(component, "", "", f"'{component}' must be a list of tables")
            rows = []
        columns: dict[str, list[Any]] = {field: [] for field in schema}
        for k, row in enumerate(rows):
            name = str(row.get("name", f"#{k}"))
            for extra in sorted(set(row) - set(schema)):
                self.issue(component, extra, name, "unknown field")
            for field, (kind, default) in schema.items():
                if field in row:
                    value = self.value(component, field, name, row[field], kind)
                elif default is None:
                    self.issue(component, field, name, "missing required field")
                    value = -1 if kind == "bus" else math.nan
                else:
                    value = kind[default] if isinstance(kind, dict) else default
                columns[field].append(value)
        if component == "bus":
            self.buses = {n: i for i, n in enumerate(columns["name"])}
        return _TABLES[component](**{
            field: np.array(values, dtype=_TABLES[component].dtypes[field]) if values
            else np.array([], dtype=_TABLES[component].dtypes[field])
            for field, values in columns.items()
        })

    def section(self, component: str, data: Any, schema: Mapping[str, Any]) -> dict[str, Any]:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.issue(component, "", "", f"'{component}' must be a table")
            data = {}
        for extra in sorted(set(data) - set(schema)):
            self.issue(component, extra, component, "unknown field")
        out: dict[str, Any] = {}
        for field, default in schema.items():
            if field not in data:
                if default is None:
                    self.issue(component, field, component, "missing required field")
                out[field] = default
            elif field == "bus":
                out[field] = self.value(component, field, component, data[field], "bus")
            else:
                out[field] = self.number(component, field, component, data[field], "float")
        return out


def feeder_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> Feeder:
    """A validated :class:`Feeder` from the parsed structure of a gridedge feeder file."""
    p = _Parser()
    if data.get("format", FORMAT) != FORMAT:
        p.issue("feeder", "format", "", f"unsupported format {data.get('format')!r}: expected {FORMAT!r}")
    for extra in sorted(set(data) - _TOP):
        p.issue("feeder", extra, "", "unknown section or field")
    buses = p.table("bus", data.get("bus"))
    tables = {c: p.table(c, data.get(c)) for c in ("line", "transformer", "load", "der")}
    src = p.section("source", data.get("source"), _SOURCE)
    limits = p.section("limits", data.get("limits"), _LIMITS)
    frequency = p.number("feeder", "frequency_hz", "", data.get("frequency_hz", 50.0), "float")
    name = str(data.get("name", source or "feeder"))
    feeder = Feeder(
        name=name, buses=buses, source=Source(bus=-1 if src["bus"] is None else int(src["bus"]),
                                              v_pu=src["v_pu"], sk_va=src["sk_va"], rx_ratio=src["rx_ratio"],
                                              z01_ratio=src["z01_ratio"]),
        lines=tables["line"], transformers=tables["transformer"], loads=tables["load"], ders=tables["der"],
        limits=Limits(**limits), frequency_hz=frequency,
    )
    issues = with_validation(p.issues, feeder)
    if issues:
        raise FeederError(issues, source or name)
    return feeder


def _plain(value: Any, kind: _Kind) -> Any:
    if isinstance(kind, dict):
        return next(k for k, v in kind.items() if v == value)
    if kind in ("name",):
        return str(value)
    if kind == "int":
        return int(value)
    return float(value)


def feeder_to_dict(feeder: Feeder) -> dict[str, Any]:
    """The structure of a gridedge feeder file (missing values, NaN, are left out)."""
    names = feeder.buses.name
    out: dict[str, Any] = {"format": FORMAT, "name": feeder.name, "frequency_hz": feeder.frequency_hz}
    out["limits"] = {k: float(getattr(feeder.limits, k)) for k in _LIMITS}
    src = feeder.source
    out["source"] = {"bus": str(names[src.bus]), "v_pu": src.v_pu, "sk_va": src.sk_va, "rx_ratio": src.rx_ratio,
                     "z01_ratio": src.z01_ratio}
    tables = {"bus": feeder.buses, "line": feeder.lines, "transformer": feeder.transformers, "load": feeder.loads,
              "der": feeder.ders}
    for component, table in tables.items():
        schema = _SCHEMA[component]
        columns = {field: getattr(table, field).tolist() for field in schema}
        rows = []
        for k in range(len(table)):
            row: dict[str, Any] = {}
            for field, (kind, _) in schema.items():
                value = columns[field][k]
                if isinstance(value, float) and math.isnan(value):
                    continue
                row[field] = str(names[value]) if kind == "bus" else _plain(value, kind)
            rows.append(row)
        out[component] = rows
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    return str(value)


def dumps_feeder(feeder: Feeder, fmt: str = "toml") -> str:
    """The feeder as gridedge feeder file text, ``fmt`` ``"toml"`` or ``"json"`` (one element per line)."""
    data = feeder_to_dict(feeder)
    if fmt == "json":
        parts = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data.items() if not isinstance(v, list)]
        for component in _SCHEMA:
            joined = ",\n".join(f"  {json.dumps(r)}" for r in data[component])
            parts.append(f"{json.dumps(component)}: [\n{joined}\n ]" if joined else f"{json.dumps(component)}: []")
        return "{\n " + ",\n ".join(parts) + "\n}\n"
    if fmt != "toml":
        raise FeederError((FeederIssue("feeder", "", (), f"unknown feeder file syntax {fmt!r}: toml or json"),))
    lines = ["# gridedge feeder file; the format: gateway/twin/FEEDER_FORMAT.md"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict | list)]
    for component in _SCHEMA:  # one inline table per element and line
        rows = [", ".join(f"{k} = {_toml_value(v)}" for k, v in row.items()) for row in data[component]]
        lines += ["", f"{component} = ["] + [f"  {{{row}}}," for row in rows] + ["]"] if rows else [
            "", f"{component} = []"]
    for section in ("limits", "source"):
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in data[section].items()]
    return "\n".join(lines) + "\n"


def dump_feeder(feeder: Feeder, path: str | Path) -> None:
    """Write ``feeder`` to ``path`` as a gridedge feeder file; the suffix (``.toml``/``.json``) picks the syntax."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise FeederError((FeederIssue("feeder", "", (), f"cannot write {suffix!r}: use .toml or .json"),),
                          str(target))
    target.write_text(dumps_feeder(feeder, suffix[1:]), encoding="utf-8")


def load_feeder(path: str | Path) -> Feeder:
    """Read and validate a feeder: ``.toml``/``.json`` gridedge feeder file, ``.dss`` OpenDSS master file."""
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix == ".dss":
        from gateway.twin._opendss import from_opendss  # lazily: keeps dss-python optional

        return from_opendss(source)
    if suffix not in (".toml", ".json"):
        raise FeederError((FeederIssue("feeder", "", (), f"unknown feeder file type {suffix!r}: use .toml, .json "
                                       "(gridedge feeder file) or .dss (OpenDSS master)"),), str(source))
    try:
        text = source.read_text(encoding="utf-8")
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise FeederError((FeederIssue("feeder", "", (), f"cannot read it: {exc.strerror or exc}"),),
                          str(source)) from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeederError((FeederIssue("feeder", "", (), f"not valid {suffix[1:].upper()}: {exc}"),),
                          str(source)) from exc
    if not isinstance(data, dict):
        raise FeederError((FeederIssue("feeder", "", (), "the file must hold a table/object"),), str(source))
    return feeder_from_dict(data, source=str(source))
