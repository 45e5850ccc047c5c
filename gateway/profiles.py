"""Device profiles: the schema of ``device_profiles/*.toml``, where profiles are found, and how they load.

A profile is vendor knowledge kept as *data*: connection defaults, Modbus limits, the SunSpec models worth
polling, the controls the family implements and its quirks (booleans and register spans the code reads).
Code never branches on which family a device is; it reads the profile's fields. So no family name appears
in this package's Python, only in the TOML files.

Profiles are looked up by name (the file's stem) in, first to last:

1. each directory in the ``GRIDEDGE_PROFILES`` environment variable (``os.pathsep``-separated);
2. ``<repo>/device_profiles`` (beside the package, for a checkout or an editable install);
3. ``gateway/data/device_profiles`` (package data, for a wheel that ships them).

The first directory holding ``<name>.toml`` wins. A malformed profile raises :class:`ProfileError` whose
message names the file, the key and the fix. This module also holds the translation of pydantic validation
errors into those messages, which :mod:`gateway.config` shares.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
import tomllib
import types
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from gateway.errors import ProfileError, SunSpecError
from gateway.sunspec import model_def

__all__ = [
    "CONTROLS",
    "MAX_READ_REGISTERS",
    "PROFILES_ENV",
    "BaseAddress",
    "Control",
    "DeviceProfile",
    "ModbusSettings",
    "ModelId",
    "ModelLength",
    "Port",
    "ProfileControls",
    "ProfileDefaults",
    "Quirks",
    "RegisterSpan",
    "UnitId",
    "default_profile_dirs",
    "find_profile",
    "list_profiles",
    "load_profile",
    "read_profile",
]

#: Environment variable naming extra profile directories, searched before the built-in ones.
PROFILES_ENV = "GRIDEDGE_PROFILES"

#: The Modbus limit on registers per read (function code 3).
MAX_READ_REGISTERS = 125

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_PROFILES = _PACKAGE_DIR.parent / "device_profiles"
_PACKAGED_PROFILES = _PACKAGE_DIR / "data" / "device_profiles"
_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

#: Controls a profile can declare. The number is the SunSpec model the control writes.
Control = Literal[
    "curtail_123",  # WMaxLimPct in model 123 (immediate controls)
    "pf_123",  # OutPFSet in model 123
    "storage_124",  # charge/discharge rates in model 124
    "voltvar_126",  # volt-var curve in model 126
    "curtail_704",  # WMaxLimPct in model 704 (DER AC controls, IEEE 1547-2018)
    "wset_704",  # WSet (absolute active-power setpoint) in model 704
    "pf_704",  # PF set in model 704
    "voltvar_705",  # volt-var curve in model 705
]
CONTROLS: tuple[str, ...] = get_args(Control)

_FINAL = "gridedge_message"  # marks an error context whose message is already written for the user

BaseAddress = Literal["auto", 0, 40000, 50000]
_BASES: tuple[object, ...] = get_args(BaseAddress)


# --- small helpers shared with gateway.config ---------------------------------------------------------------------


def _fail(code: str, message: str, *, key: str | None = None) -> PydanticCustomError:
    """A validation error whose text is ``message`` verbatim; ``key`` is appended to the error's location.

    The message travels in the context (the template is just ``{msg}``) so braces in user input are safe.
    """
    ctx: dict[str, Any] = {"msg": message, _FINAL: True}
    if key is not None:
        ctx["key"] = key
    return PydanticCustomError(code, "{msg}", ctx)


def _show(value: Any, limit: int = 60) -> str:
    """A value as it would be written in TOML, shortened for an error message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, float):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    elif isinstance(value, int | datetime | date | time):
        text = str(value)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {_show(v, limit)}" for k, v in value.items()) + "}"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_show(v, limit) for v in value) + "]"
    elif isinstance(value, BaseModel):
        text = f"<{type(value).__name__}>"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_model_id(value: int) -> int:
    try:
        model_def(value)
    except SunSpecError:
        raise _fail(
            "model_id", f"{_show(value)} is not a SunSpec model id — use one SunSpec defines (e.g. 1, 103, 123, 704)"
        ) from None
    return value


def _check_unit(value: int) -> int:
    if not 1 <= value <= 247:
        raise _fail("unit_id", f"{value} is not a Modbus unit id — use 1..247")
    return value


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise _fail("port", f"{value} is not a TCP port — use 1..65535 (Modbus TCP is usually 502)")
    return value


def _check_base(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value in _BASES:
        return value
    hint = " (write the number without quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
    raise _fail(
        "base",
        f'{_show(value)} is not a SunSpec base address — use "auto", 0, 40000 or 50000{hint}',
    )


def _non_empty(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """A list that must hold something (checked after the items, so a bad item is not also called "empty")."""
    if not value:
        raise _fail("empty", "is empty — give at least one")
    return value


ModelId = Annotated[int, AfterValidator(_check_model_id)]
UnitId = Annotated[int, AfterValidator(_check_unit)]
Port = Annotated[int, AfterValidator(_check_port)]
Base = Annotated[BaseAddress, BeforeValidator(_check_base)]


class _Strict(BaseModel):
    """Frozen, no unknown keys, no type coercion: TOML is typed, so ``"502"`` for a port is a mistake to report."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


# --- the profile schema ---------------------------------------------------------------------------------------------


class ProfileDefaults(_Strict):
    """What a ``[[devices]]`` entry inherits when it leaves the key out."""

    port: Port = 502
    unit: UnitId = 1
    base: Base = "auto"
    #: Models to poll when the device advertises them (alternatives such as 101/102/103 may all be listed;
    #: only those present are read). Order is preference, not register order.
    models: Annotated[tuple[ModelId, ...], Field(strict=False), AfterValidator(_non_empty)]


class ModbusSettings(_Strict):
    """How to talk Modbus to this family."""

    #: 16 (write multiple registers) or 6 (write single register) for control writes.
    write_function_code: Literal[6, 16] = 16
    #: Largest read the device accepts (the protocol allows 125).
    max_read_registers: Annotated[int, Field(ge=1, le=MAX_READ_REGISTERS)] = MAX_READ_REGISTERS
    #: RTU only: extra silence between a reply and the next request on the bus, on top of the 3.5 characters.
    inter_frame_delay_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0


class ProfileControls(_Strict):
    """Which controls the family implements (each still needs its model advertised by the device)."""

    supported: Annotated[tuple[Control, ...], Field(strict=False)] = ()
    #: Reversion timeout written with each setpoint (``*_RvrtTms``): the device falls back on its own after this.
    reversion_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0


class ModelLength(_Strict):
    """A model the device advertises with a length ``L`` other than the SunSpec definition's."""

    model: ModelId
    length: Annotated[int, Field(ge=0, le=65_535)]


class RegisterSpan(_Strict):
    """Registers inside an advertised model that the device refuses to read (Modbus exception 2).

    ``offset`` counts from the model's ``ID`` register, as :class:`gateway.sunspec.PointDef` offsets do.
    """

    model: ModelId
    offset: Annotated[int, Field(ge=0, le=65_535)]
    length: Annotated[int, Field(ge=1, le=65_535)]


class Quirks(_Strict):
    """Departures from the SunSpec specification, as data the discovery and read planner consult."""

    #: The model chain is not in ascending id order: walk the whole chain; never sort or stop early by id.
    models_not_ascending: bool = False
    #: The same model id may appear more than once in the chain (e.g. a common block per attached meter).
    repeated_models: bool = False
    #: Some registers inside advertised models answer exception 2: on exception 2, split the read and mark
    #: the points that still fail as unimplemented instead of failing the whole model.
    exception_inside_models: bool = False
    #: Spans known to answer exception 2; the planner reads around them from the start.
    unreadable: Annotated[tuple[RegisterSpan, ...], Field(strict=False)] = ()
    #: Models advertised with a non-standard length ``L``; accept these lengths instead of rejecting the model.
    model_lengths: Annotated[tuple[ModelLength, ...], Field(strict=False)] = ()
    #: The chain may end without the 0xFFFF end marker: treat exception 2, zeros or a failed read after the
    #: last model as the end of the chain.
    missing_end_marker: bool = False
    #: Models this device advertises longer than one read (125 registers); the planner splits them.
    long_models: Annotated[tuple[ModelId, ...], Field(strict=False)] = ()


class DeviceProfile(_Strict):
    """One ``device_profiles/<name>.toml`` file."""

    name: str
    description: Annotated[str, Field(min_length=1)]
    brands: Annotated[tuple[str, ...], Field(strict=False)] = ()
    defaults: ProfileDefaults
    modbus: ModbusSettings = ModbusSettings()
    controls: ProfileControls = ProfileControls()
    quirks: Quirks = Quirks()

    @model_validator(mode="after")
    def _controls_need_their_models(self) -> DeviceProfile:
        for i, control in enumerate(self.controls.supported):
            model = int(control.rsplit("_", 1)[1])
            if model not in self.defaults.models:
                raise _fail(
                    "control_model",
                    f"{control} writes model {model}, which defaults.models does not poll — "
                    f"add {model} to defaults.models or remove {control}",
                    key=f"controls.supported[{i}]",
                )
        return self

    def model_length_ok(self, model_id: int, length: int) -> bool:
        """Whether the quirks accept ``length`` as the advertised ``L`` of ``model_id`` (beyond the standard)."""
        return any(q.model == model_id and q.length == length for q in self.quirks.model_lengths)


# --- finding and loading profiles ------------------------------------------------------------------------------------


def default_profile_dirs() -> tuple[Path, ...]:
    """The directories searched for profiles, first to last (see the module docstring)."""
    dirs = [Path(p) for p in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if p.strip()]
    dirs += [_REPO_PROFILES, _PACKAGED_PROFILES]
    return tuple(dirs)


def _dirs(search_dirs: Iterable[Path | str] | None) -> tuple[Path, ...]:
    return default_profile_dirs() if search_dirs is None else tuple(Path(d) for d in search_dirs)


def list_profiles(search_dirs: Iterable[Path | str] | None = None) -> tuple[str, ...]:
    """Names of every profile found in the search directories, sorted."""
    names: set[str] = set()
    for d in _dirs(search_dirs):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml") if p.is_file() and _PROFILE_NAME.fullmatch(p.stem))
    return tuple(sorted(names))


def find_profile(name: str, search_dirs: Iterable[Path | str] | None = None) -> Path:
    """The file of profile ``name``; :class:`ProfileError` naming the known profiles if there is none."""
    dirs = _dirs(search_dirs)
    if _PROFILE_NAME.fullmatch(name):
        for d in dirs:
            path = d / f"{name}.toml"
            if path.is_file():
                return path
    known = list_profiles(dirs)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    if not known:
        searched = ", ".join(str(d) for d in dirs)
        raise ProfileError(f'no profile "{name}" — no profiles found at all (searched {searched}; set {PROFILES_ENV})')
    raise ProfileError(f"no profile {_show(name)} — {hint}known: {', '.join(known)}")


def load_profile(name: str, search_dirs: Iterable[Path | str] | None = None) -> DeviceProfile:
    """Find profile ``name`` and load it; :class:`ProfileError` if it is unknown or malformed."""
    return read_profile(find_profile(name, search_dirs))


def read_profile(path: Path | str) -> DeviceProfile:
    """Load and schema-check one profile file. The ``name`` key must equal the file's stem.

    Profiles are immutable, so a file unchanged since its last load (same mtime and size) is not parsed again.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return _read_profile(path, 0, -1)  # let the read report why
    return _read_profile(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _read_profile(path: Path, mtime_ns: int, size: int) -> DeviceProfile:  # the stamp is the cache key
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{source}: no such profile file") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start}) — save it as UTF-8") from None
    except OSError as exc:
        raise ProfileError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    data = _parse_toml(text, source, ProfileError)
    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError("\n".join(f"{source}: {p}" for p in _problems(exc, DeviceProfile))) from None
    if profile.name != path.stem:
        raise ProfileError(
            f'{source}: name: {_show(profile.name)} differs from the file name — write name = "{path.stem}" '
            f"(or rename the file to {profile.name}.toml)"
        )
    return profile


# --- TOML and validation errors as messages an engineer can act on ---------------------------------------------------

_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)$")


def _parse_toml(text: str, source: str, error: type[Exception]) -> dict[str, Any]:
    """``tomllib.loads`` with a syntax error turned into ``error`` naming the line, column and the line's text."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raw = str(exc)
        m = _TOML_POS.search(raw)
        what = _TOML_POS.sub("", raw).strip().rstrip(".")
        if m is None:
            where = "end of file" if "end of document" in raw else "syntax"
            what = re.sub(r"\s*\(at end of document\)$", "", what)
            raise error(f"{source}: {where}: not valid TOML — {what}; check for an unclosed quote or bracket") from None
        line, col = int(m[1]), int(m[2])
        lines = text.splitlines()
        shown = lines[line - 1] if 0 < line <= len(lines) else ""
        gutter = " " * len(str(line))
        snippet = f"\n    {line} | {shown[:120]}\n    {gutter} | {' ' * min(max(col - 1, 0), 120)}^" if shown else ""
        raise error(
            f"{source}: line {line}, column {col}: not valid TOML — {what}; "
            f'check quotes, brackets, commas and the "=" on that line{snippet}'
        ) from None
    except (RecursionError, ValueError) as exc:  # nesting beyond the parser's depth, or an impossible date
        raise error(f"{source}: not valid TOML — {exc or 'nested too deeply'}") from None


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _submodel(tp: Any, index: bool) -> Any:
    """The model class reached from annotation ``tp`` by a key (``index`` False) or a list index (True)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _submodel(get_args(tp)[0], index)
    if origin is Union or origin is types.UnionType:
        for arg in get_args(tp):
            found = _submodel(arg, index)
            if found is not None:
                return found
        return None
    if index:
        if origin in (tuple, list):
            return _submodel(get_args(tp)[0], False)
        return None
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class at ``loc`` under ``root`` (for the list of keys allowed there), if any."""
    current: Any = root
    pending: Any = None
    for part in loc:
        if isinstance(part, str):
            if current is None or part not in current.model_fields:
                return None
            pending = current.model_fields[part].annotation
            current = _submodel(pending, False)
        else:
            current = _submodel(pending, True)
            pending = current
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _field_at(root: type[BaseModel], loc: Sequence[int | str]) -> Any:
    """The annotation of the field at ``loc`` (the last part a key), or None."""
    if not loc or not isinstance(loc[-1], str):
        return None
    parent = _model_at(root, loc[:-1])
    if parent is None or loc[-1] not in parent.model_fields:
        return None
    return parent.model_fields[loc[-1]].annotation


#: Examples offered when a required key is missing.
_EXAMPLES: dict[str, str] = {
    "id": '"inv-1"',
    "gateway_id": '"gw-1"',
    "name": '"my-profile"',
    "description": '"what this profile is for"',
    "models": "[1, 103, 123]",
    "model": "160",
    "length": "2",
    "offset": "2",
}


def _unknown_key(root: type[BaseModel], loc: Sequence[int | str]) -> str:
    parent = _model_at(root, loc[:-1])
    allowed = sorted(parent.model_fields) if parent is not None else []
    key = str(loc[-1])
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f'unknown key — did you mean "{close[0]}"?'
    if len(loc) > 1 and key in root.model_fields:
        table = _path(loc[:-1])
        return (
            f"unknown key in [{table}] — every key after a [{table}] header belongs to that table: "
            f"move {key} above the first [table] header"
        )
    if allowed:
        return f"unknown key — allowed here: {', '.join(allowed)}"
    return "unknown key — remove it"


def _missing(root: type[BaseModel], loc: Sequence[int | str]) -> str:
    key = str(loc[-1])
    ann = _field_at(root, loc)
    if _submodel(ann, True) is not None:
        return f"missing — add at least one [[{_path(loc)}]] table"
    sub = _submodel(ann, False)
    if sub is not None:
        required = [n for n, f in sub.model_fields.items() if f.is_required()]
        keys = f" with {' and '.join(required)}" if required else ""
        return f"missing — add a [{_path(loc)}] table{keys}"
    return f"missing — add {key} = {_EXAMPLES.get(key, '...')}"


def _describe(err: Mapping[str, Any], root: type[BaseModel]) -> tuple[str, str]:
    """(key path, message) for one pydantic error dict."""
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    if "key" in ctx and ctx["key"] is not None:
        path = _path(loc)
        return (f"{path}.{ctx['key']}" if path else str(ctx["key"])), str(ctx["msg"])
    if ctx.get(_FINAL):  # our own _fail(): the text is final
        return _path(loc), str(ctx["msg"])
    if kind == "extra_forbidden":
        return _path(loc), _unknown_key(root, loc)
    if kind == "missing":
        return _path(loc), _missing(root, loc)
    shown = _show(value)
    unquote = " (remove the quotes)" if isinstance(value, str) and _looks_numeric(value) else ""
    messages: dict[str, str] = {
        "int_type": f"{shown} is not a whole number{unquote}",
        "float_type": f"{shown} is not a number{unquote}",
        "bool_type": f"{shown} is not true or false (write true or false, without quotes)",
        "string_type": f'{shown} is not text — put it in double quotes, e.g. "{value}"',
        "finite_number": f"{shown} is not a finite number — give a real value",
        "tuple_type": (
            f"is a single table — write [[{_path(loc)}]] (double brackets) for each entry"
            if isinstance(value, Mapping)
            else f"{shown} is not a list — write it in brackets, e.g. [1, 2]"
        ),
        "list_type": f"{shown} is not a list — write it in brackets, e.g. [1, 2]",
        "model_type": f"{shown} is not a table — write it as [{_path(loc)}] or {{ key = value }}",
        "model_attributes_type": f"{shown} is not a table — write it as [{_path(loc)}] or {{ key = value }}",
        "dict_type": f"{shown} is not a table — write it as [{_path(loc)}] or {{ key = value }}",
        "literal_error": f"{shown} is not allowed — use {str(ctx.get('expected', '')).replace(chr(39), chr(34))}",
        "greater_than": f"{shown} is too small — use a value above {_num(ctx.get('gt'))}",
        "greater_than_equal": f"{shown} is too small — use {_num(ctx.get('ge'))} or more",
        "less_than": f"{shown} is too large — use a value below {_num(ctx.get('lt'))}",
        "less_than_equal": f"{shown} is too large — use {_num(ctx.get('le'))} or less",
        "too_short": f"{shown} is empty — give at least {ctx.get('min_length')}",
        "too_long": f"{shown} is too long — give at most {ctx.get('max_length')}",
        "string_too_short": "is empty — give a value",
        "string_too_long": f"{shown} is too long — use at most {ctx.get('max_length')} characters",
    }
    if kind == "literal_error" and isinstance(value, str):
        if value.strip().isdigit():
            messages[kind] += " (numbers are written without quotes)"
        else:
            close = difflib.get_close_matches(value, re.findall(r"'([^']*)'", str(ctx.get("expected", ""))), n=1)
            if close:
                messages[kind] = f'{shown} is not allowed — did you mean "{close[0]}"?'
    return _path(loc), messages.get(kind, f"{shown}: {err.get('msg', 'invalid')}")


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _problems(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """Every problem in ``exc`` as ``key.path: what is wrong — the fix``, in file order."""
    out: list[str] = []
    for err in exc.errors(include_url=False):
        path, message = _describe(err, root)
        line = f"{path}: {message}" if path else message
        if line not in out:
            out.append(line)
    return out
