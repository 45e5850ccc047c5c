"""``gridedge twin envelope`` and ``gridedge twin hosting``: the JSON contract (ARCHITECTURE.md), the human table,
--vmin/--vmax over the feeder file's limits, OpenDSS masters, and bad --der values exiting 4 with the problem named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.cli import main
from gateway.twin import (
    Criteria,
    EnvelopeRequest,
    Feeder,
    HostingRequest,
    Phase,
    Policy,
    PowerFlow,
    certify_envelope,
    dump_feeder,
    from_pandapower,
    hosting_capacity,
    load_feeder,
    with_ders,
)
from tests.twin._data import needs, small_feeder
from tests.twin.test_envelope_ratings import DSS

DERS = ["--der", "pv17@17:300", "--der", "pv32@32:800", "--der", "pv24@24"]  # pv24: no rating
RATED = ["--der", "pv17@17:300", "--der", "pv32@32:800", "--der", "pv24@24:1500"]


@pytest.fixture(scope="module")
def baran_wu_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pn = needs("pandapower.networks")
    path = tmp_path_factory.mktemp("feeders") / "case33bw.json"
    dump_feeder(from_pandapower(pn.case33bw()), path)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def library(path: Path, policy: Policy = Policy.EQUAL, scale: float = 1.0, pv24_w: float = np.nan,
            **criteria: Any) -> Any:
    """What the library gives for ``DERS`` (``RATED`` with ``pv24_w``) on the feeder at ``path``."""
    feeder = with_ders(load_feeder(path), ["pv17", "pv32", "pv24"], ["17", "32", "24"],
                       rating_w=[300e3, 800e3, pv24_w], keep=True)
    loads = feeder.loads
    return certify_envelope(PowerFlow(feeder), EnvelopeRequest(policy=policy, criteria=Criteria(**criteria)),
                            load_p_w=loads.p_w * scale, load_q_var=loads.q_var * scale)


@pytest.mark.parametrize("policy", list(Policy))
def test_envelope_json_is_the_documented_contract(baran_wu_file: Path, capsys: pytest.CaptureFixture[str],
                                                   policy: Policy) -> None:
    code, out, err = run(capsys, "twin", "envelope", str(baran_wu_file), *RATED, "--policy", policy.value,
                         "--load-scale", "0.4", "--json")
    assert code == 0, err
    document = json.loads(out)
    expected = library(baran_wu_file, policy, 0.4, pv24_w=1500e3)
    assert list(document["ders"]) == ["pv17", "pv32", "pv24"]
    for k, der_id in enumerate(expected.der_id):
        entry = document["ders"][der_id]
        assert entry["export_kw"] == pytest.approx(expected.export_w[k] / 1e3)
        assert entry["import_kw"] == pytest.approx(expected.import_w[k] / 1e3)
    cert = document["certificate"]
    for key in ("vmax_pu", "vmin_pu", "max_loading", "method", "ac_solves", "certified", "margin_pu"):
        assert key in cert, key
    assert cert["certified"] is True
    assert cert["vmax_pu"] == pytest.approx(expected.certificate.vmax_pu)
    assert cert["vmin_pu"] == pytest.approx(expected.certificate.vmin_pu)
    assert cert["ac_solves"] == expected.certificate.ac_solves
    assert cert["method"].startswith(policy.value)
    assert cert["export"]["binding"] == expected.certificate.export.binding
    assert document["ders"]["pv24"]["rating_kw"] == 1500.0
    assert document["policy"] == policy.value


def test_envelope_human_output_is_a_table(baran_wu_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "twin", "envelope", str(baran_wu_file), *DERS, "--load-scale", "0.4")
    assert code == 0
    expected = library(baran_wu_file, scale=0.4)
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["DER", "bus"])
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [r[0] for r in rows] == ["pv17", "pv32", "pv24"]
    assert [r[1] for r in rows] == ["17", "32", "24"]
    assert [r[2] for r in rows] == ["300.0", "800.0", "-"]  # pv24: no rating
    assert [float(r[3]) for r in rows] == pytest.approx(expected.export_w / 1e3, abs=0.05)
    assert [float(r[4]) for r in rows] == pytest.approx(expected.import_w / 1e3, abs=0.05)
    assert "export: certified" in out
    assert "import: certified" in out


def test_an_uncertified_direction_says_so(baran_wu_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At nominal load the 33-bus feeder is at 0.913 pu: import cannot be certified even at 0 W."""
    code, out, _ = run(capsys, "twin", "envelope", str(baran_wu_file), *DERS)
    assert code == 0
    assert "import: NOT certified, default envelope published: fails with every DER at 0 W: vmin at bus" in out
    code, out, _ = run(capsys, "twin", "envelope", str(baran_wu_file), *DERS, "--default-import-kw", "500",
                       "--json")
    document = json.loads(out)
    cert = document["certificate"]
    assert cert["certified"] is False
    assert cert["import"]["certified"] is False
    assert cert["export"]["certified"] is True
    assert "fails with every DER at 0 W" in cert["reason"]
    # The configured default envelope, capped at each rating.
    assert [d["import_kw"] for d in document["ders"].values()] == [300.0, 500.0, 500.0]
    code, _, err = run(capsys, "twin", "envelope", str(baran_wu_file), *DERS, "--default-export-kw", "-1")
    assert code == 4
    assert "default_export_w: must be a number >= 0" in err


def test_vmin_vmax_override_the_feeder_file(tmp_path: Path, baran_wu_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    limited = tmp_path / "limited.json"
    data = json.loads(baran_wu_file.read_text())
    data["limits"] = {"vmin_pu": 0.96, "vmax_pu": 1.04, "max_loading": 1.0}
    limited.write_text(json.dumps(data))
    code, out, _ = run(capsys, "twin", "envelope", str(limited), *DERS, "--load-scale", "0.4", "--json")
    assert code == 0
    from_file = json.loads(out)
    assert (from_file["certificate"]["vmin_limit_pu"], from_file["certificate"]["vmax_limit_pu"]) == (0.96, 1.04)
    assert from_file["certificate"]["export"]["vmax_pu"] <= 1.04 - 0.002 + 1e-12
    code, out, _ = run(capsys, "twin", "envelope", str(limited), *DERS, "--load-scale", "0.4", "--vmin", "0.94",
                       "--vmax", "1.06", "--json")
    assert code == 0
    overridden = json.loads(out)
    assert (overridden["certificate"]["vmin_limit_pu"], overridden["certificate"]["vmax_limit_pu"]) == (0.94, 1.06)
    expected = library(limited, scale=0.4, vmin_pu=0.94, vmax_pu=1.06)
    assert overridden["ders"]["pv24"]["export_kw"] == pytest.approx(expected.export_w[2] / 1e3)
    assert overridden["ders"]["pv24"]["export_kw"] > from_file["ders"]["pv24"]["export_kw"]
    assert overridden["ders"]["pv24"]["import_kw"] > from_file["ders"]["pv24"]["import_kw"]


def test_envelope_of_an_opendss_master(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs("dss")
    path = tmp_path / "ratings.dss"
    path.write_text(DSS.format(kva=100, a1=1000, a2=1000))
    code, out, err = run(capsys, "twin", "envelope", str(path), "--der", "ev@n2:20", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert list(document["ders"]) == ["generator.pv1", "generator.pv2", "ev"]  # the master's DERs, then --der
    assert document["certificate"]["certified"] is True
    assert document["certificate"]["export"]["binding"] == "loading of transformer transformer.tx"


@pytest.mark.parametrize(("der", "message"), [
    ("pv1@nowhere:5", "der.bus: unknown bus 'nowhere' [pv1]"),
    ("pv1@17:abc", "der.rating_w: rating 'abc' (in --der pv1@17:abc) must be a number of kW > 0 [pv1]"),
    ("pv1@17:-5", "der.rating_w: rating '-5'"),
    ("pv1@17:", "der.rating_w: rating ''"),
    ("pv1", "der: expected ID@BUS[:RATING_KW], e.g. pv1@b17:300 [pv1]"),
    ("@17:5", "expected ID@BUS[:RATING_KW]"),
])
@pytest.mark.parametrize("command", ["envelope", "hosting"])
def test_a_bad_der_exits_4_naming_the_problem(baran_wu_file: Path, capsys: pytest.CaptureFixture[str], der: str,
                                              message: str, command: str) -> None:
    code, out, err = run(capsys, "twin", command, str(baran_wu_file), "--der", der, "--json")
    assert code == 4
    assert out == ""
    assert message in err


def test_bad_requests_exit_4(baran_wu_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "twin", "envelope", str(baran_wu_file), "--der", "a@5:10", "--der", "a@6:10")
    assert code == 4
    assert "der.name: names must be unique [a]" in err
    code, _, err = run(capsys, "twin", "envelope", str(baran_wu_file))
    assert code == 4
    assert "no DER connection point" in err
    code, _, err = run(capsys, "twin", "envelope", str(baran_wu_file), "--der", "a@5", "--policy", "proportional")
    assert code == 4
    assert "proportional needs every DER's rating (> 0); missing: a" in err
    code, _, err = run(capsys, "twin", "envelope", str(baran_wu_file), "--der", "a@5", "--vmin", "1.1")
    assert code == 4
    assert "leave no band" in err
    code, _, err = run(capsys, "twin", "hosting", str(tmp_path / "missing.json"))
    assert code == 4
    assert "cannot read it" in err
    code, _, err = run(capsys, "twin", "hosting", str(baran_wu_file), "--bus", "nowhere")
    assert code == 4
    assert "unknown bus (hosting candidate) [nowhere]" in err


def test_hosting_json_and_table(baran_wu_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["twin", "hosting", str(baran_wu_file), "--der", "pv17@17:300", "--bus", "5", "--bus", "24",
            "--load-scale", "0.4"]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    document = json.loads(out)
    feeder: Feeder = with_ders(load_feeder(baran_wu_file), ["pv17"], ["17"], rating_w=[300e3], keep=True)
    loads = feeder.loads
    expected = hosting_capacity(feeder, HostingRequest(buses=("5", "24")), load_p_w=loads.p_w * 0.4,
                                load_q_var=loads.q_var * 0.4)
    assert list(document["buses"]) == ["5", "24"]
    for k, bus in enumerate(("5", "24")):
        assert document["buses"][bus]["hosting_kw"] == pytest.approx(expected.export_w[k] / 1e3)
        assert document["buses"][bus]["import_hosting_kw"] == pytest.approx(expected.import_w[k] / 1e3)
    assert expected.holders is not None
    assert document["holders"]["ders"]["pv17"]["export_kw"] == pytest.approx(expected.holders.export_w[0] / 1e3)
    assert document["certified"] is True
    code, out, _ = run(capsys, *argv)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["5"], ["24"])}
    assert float(rows["24"][1]) == pytest.approx(expected.export_w[1] / 1e3, abs=0.05)
    assert "holders at their limits" in out


@pytest.mark.parametrize("phase", ["abc", "c"])
def test_hosting_of_the_feeder_files_own_ders_and_a_phase(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          phase: str) -> None:
    """The small feeder's own DERs are the holders; a new single-phase DER on phase c of an unbalanced feeder."""
    feeder = small_feeder()
    path = tmp_path / "small.toml"
    dump_feeder(feeder, path)
    code, out, err = run(capsys, "twin", "hosting", str(path), "--bus", "n8", "--bus", "n5", "--phase", phase,
                         "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["phase"] == phase
    assert list(document["holders"]["ders"]) == ["pv3", "pv6", "pv4"]
    expected = hosting_capacity(feeder, HostingRequest(buses=("n8", "n5"), phase=Phase[phase.upper()]))
    for k, bus in enumerate(("n8", "n5")):
        assert document["buses"][bus]["hosting_kw"] == pytest.approx(expected.export_w[k] / 1e3)
        assert document["buses"][bus]["binding"] == expected.export_binding[k]


def test_the_bundled_feeders_solve_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A new user has no feeder file: ``builtin:case33bw`` is Baran-Wu from pandapower, with its published answer."""
    needs("pandapower")
    code, out, _ = run(capsys, "twin", "solve", "builtin:case33bw", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["converged"]
    assert res["losses_kw"] == pytest.approx(202.67, abs=0.1)
    assert res["vmin_pu"] == pytest.approx(0.9131, abs=1e-4)
    code, _, err = run(capsys, "twin", "solve", "builtin:case34")
    assert code == 4
    assert "builtin:case33bw" in err  # the fix is named
