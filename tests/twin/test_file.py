"""The gridedge feeder file: round trips, the documented example, and validation issues that name what is wrong."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.cli import main
from gateway.twin import (
    FeederError,
    PowerFlow,
    dump_feeder,
    dumps_feeder,
    feeder_from_dict,
    feeder_to_dict,
    load_feeder,
    validate_feeder,
)
from tests.twin._data import small_feeder

FORMAT_DOC = Path(__file__).resolve().parents[2] / "gateway" / "twin" / "FEEDER_FORMAT.md"


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_dump_then_load_gives_the_same_feeder_and_the_same_solve(tmp_path: Path, suffix: str) -> None:
    feeder = small_feeder()
    path = tmp_path / f"small{suffix}"
    dump_feeder(feeder, path)
    back = load_feeder(path)
    assert back.name == feeder.name
    assert back.source == feeder.source
    assert back.limits == feeder.limits
    for table in ("buses", "lines", "transformers", "loads", "ders"):
        a, b = getattr(feeder, table), getattr(back, table)
        for field in type(a).dtypes:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{table}.{field}")
    der = np.outer([0.0, 1.0], feeder.ders.rating_w)
    np.testing.assert_array_equal(PowerFlow(feeder).solve_batch(der).v_pu, PowerFlow(back).solve_batch(der).v_pu)


def test_missing_values_are_left_out_of_the_file() -> None:
    data = feeder_to_dict(small_feeder(banded=False))
    assert "u_rated_v" not in data["load"][0]
    assert "p_min_w" not in data["load"][0]
    assert data["load"][1]["p_max_w"] == 8000.0
    assert "nan" not in dumps_feeder(small_feeder(banded=False)).lower()


def test_the_documented_example_loads() -> None:
    text = FORMAT_DOC.read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    import tomllib

    feeder = feeder_from_dict(tomllib.loads(example.group(1)))
    assert feeder.buses.name.tolist() == ["mv", "lv", "c1"]
    assert np.isnan(feeder.loads.p_min_w[0])
    assert feeder.loads.p_max_w[1] == 5000.0
    assert PowerFlow(feeder).solve().converged[0]


def issues_of(data: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    with pytest.raises(FeederError) as caught:
        feeder_from_dict(data)
    return {(i.component, i.field): set(i.ids) for i in caught.value.issues}


@pytest.fixture
def good() -> dict[str, Any]:
    return feeder_to_dict(small_feeder())


def test_a_dangling_bus_is_named(good: dict[str, Any]) -> None:
    good["bus"].append({"name": "island", "u_rated_v": 416.0})
    assert issues_of(good) == {("bus", ""): {"island"}}


def test_a_negative_impedance_is_named(good: dict[str, Any]) -> None:
    good["line"][2]["r1_ohm"] = -0.1
    assert issues_of(good) == {("line", "r1_ohm"): {"l2"}}


def test_a_der_at_an_unknown_bus_is_named(good: dict[str, Any]) -> None:
    good["der"][0]["bus"] = "b99"
    found = issues_of(good)
    assert found == {("der", "bus"): {"pv3"}}


def test_every_issue_is_reported_at_once(good: dict[str, Any]) -> None:
    broken = copy.deepcopy(good)
    broken["line"][0]["x1_ohm"] = "lots"
    broken["line"][1]["colour"] = "red"
    del broken["transformer"][0]["uk"]
    broken["load"][0]["phase"] = "d"
    broken["load"][3]["model"] = "zip"
    broken["der"][1]["name"] = broken["der"][0]["name"]
    broken["limits"]["vmin_pu"] = 1.2
    with pytest.raises(FeederError) as caught:
        feeder_from_dict(broken, source="broken.toml")
    found = {(i.component, i.field): set(i.ids) for i in caught.value.issues}
    assert found == {
        ("line", "x1_ohm"): {"l0"}, ("line", "colour"): {"l1"}, ("transformer", "uk"): {"t1"},
        ("load", "phase"): {"load0"}, ("load", "model"): {"load3"}, ("limits", "vmin_pu"): {"limits"},
        ("der", "name"): {"pv3"},
    }
    text = str(caught.value)
    assert text.startswith("broken.toml: ")
    assert "line.x1_ohm: expected a number, got 'lots' [l0]" in text
    assert "line.colour: unknown field [l1]" in text
    assert "transformer.uk: missing required field [t1]" in text


def test_validation_rules_name_component_field_and_ids() -> None:
    import dataclasses

    feeder = small_feeder()
    ln, ld, t = feeder.lines, feeder.loads, feeder.transformers
    broken = dataclasses.replace(
        feeder,
        lines=dataclasses.replace(ln, r0_ohm=np.where(np.arange(len(ln)) == 4, np.nan, ln.r0_ohm),
                                  to_bus=np.where(np.arange(len(ln)) == 7, 0, ln.to_bus)),
        loads=dataclasses.replace(ld, vmin_pu=np.where(np.arange(len(ld)) == 1, 1.2, ld.vmin_pu),
                                  p_min_w=np.where(np.arange(len(ld)) == 2, 1.0, ld.p_min_w)),
        transformers=dataclasses.replace(t, clock=np.array([2], dtype=np.int8)),
    )
    found = {(i.component, i.field): set(i.ids) for i in validate_feeder(broken)}
    assert found[("line", "r0_ohm")] == {"l4"}  # single-phase loads need the zero sequence
    assert found[("line", "to_bus")] == {"l7"}  # 416 V to 11 kV
    assert found[("load", "vmax_pu")] == {"load1"}
    assert found[("load", "p_max_w")] == {"load2"}
    assert found[("transformer", "clock")] == {"t1"}
    assert found[("bus", "")] == {"n8"}  # cut off by moving l7


def test_load_feeder_refuses_unknown_suffixes_and_bad_syntax(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text("x: 1")
    with pytest.raises(FeederError, match="unknown feeder file type"):
        load_feeder(tmp_path / "f.yaml")
    (tmp_path / "f.toml").write_text("bus = [")
    with pytest.raises(FeederError, match="not valid TOML"):
        load_feeder(tmp_path / "f.toml")
    with pytest.raises(FeederError, match="cannot read it"):
        load_feeder(tmp_path / "missing.json")


def test_cli_twin_solve_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feeder = small_feeder()
    path = tmp_path / "small.json"
    dump_feeder(feeder, path)
    assert main(["twin", "solve", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    res = PowerFlow(feeder).solve()
    assert out["converged"] is True
    assert out["losses_kw"] == pytest.approx(res.losses_w[0] / 1e3)
    assert out["vmin_pu"] == pytest.approx(res.vmin_pu[0])
    assert out["vmax_pu"] == pytest.approx(res.vmax_pu[0])
    assert out["vmin_bus"] == feeder.buses.name[res.vmin_bus[0]]
    assert list(out["buses"]) == feeder.buses.name.tolist()
    assert out["buses"]["n3"]["v_pu"] == pytest.approx(res.v_pu[0, 4].tolist())


def test_cli_twin_solve_human(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "small.toml"
    dump_feeder(small_feeder(), path)
    assert main(["twin", "solve", str(path)]) == 0
    out = capsys.readouterr().out
    assert "converged" in out
    assert "vmin" in out
    assert "unbalanced" in out


def test_cli_twin_solve_bad_feeder_exits_4_listing_the_issues(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = feeder_to_dict(small_feeder())
    data["der"][0]["bus"] = "nowhere"
    data["line"][0]["r1_ohm"] = -1.0
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert main(["twin", "solve", str(path), "--json"]) == 4
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "der.bus: unknown bus 'nowhere' [pv3]" in captured.err
