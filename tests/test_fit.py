"""`mmfree measure --fit` on synthetic rows: figures predicted from known constants, times noise,
are fitted back; held-out rows are predicted, never fitted; too few figures are refused or
labelled calibrated, not validated."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mmfree.cli import main
from mmfree.loihi import cost, fit, hardware

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
import two_pops  # noqa: E402

# Small cores and chips, so the programs below spread over several of each.
BASE = {"core": {"neurons": 3}, "chip": {"cores": 2}}
HW = hardware.replace(hardware.DEFAULT, BASE)
# The constants the measurements come from: far from the defaults the fit starts at.
TRUTH = {"time.synop": 4 * HW.time.synop.value, "energy.static": 0.4 * HW.energy.static.value}
NOISE = 0.01  # the measurements' multiplicative noise (log standard deviation)
# (a's neurons, b's neurons, tokens, synops per token of a and of b, messages, updates): the
# synops move the time per token, so tokens/s fixes time.synop and mJ/token then energy.static.
WORKLOADS = [
  (4, 6, 2, 3_000, 20_000, 6, 10),
  (5, 3, 4, 12_000, 1_000, 2, 8),
  (3, 9, 3, 500, 40_000, 8, 12),
  (6, 4, 5, 8_000, 8_000, 4, 10),
  (2, 7, 2, 20_000, 3_000, 1, 9),
  (7, 5, 6, 1_000, 15_000, 6, 12),
]


def _workload(n_a, n_b, tokens, syn_a, syn_b, messages, updates) -> cost.Workload:
  p = two_pops.program(n_a, n_b)
  activity = {"a": {"synops": syn_a * tokens, "messages": messages * tokens,
                    "updates": updates * tokens},
              "b": {"synops": syn_b * tokens, "messages": messages * tokens,
                    "updates": updates * tokens}}  # fmt: skip
  return cost.workload(p, two_pops.place(p, HW), activity, tokens)


def _runs(tmp_path, noise=NOISE, seed=0) -> list[dict]:
  """A run directory (its measure.json) per workload, and a row of its figures under TRUTH times
  log-normal noise: generation tokens/s and mJ/token, and every other run's prefill tokens/s."""
  truth = hardware.replace(HW, TRUTH)
  rng = np.random.default_rng(seed)
  rows = []
  for i, spec in enumerate(WORKLOADS):
    w = _workload(*spec)
    d = tmp_path / f"run{i}"
    (d / "program").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "measure.json").write_text(json.dumps({"workload": w.to_json()}))
    p = cost.predict(w, truth, prompts=())
    g = {k: p["generation"][k] * np.exp(noise * rng.standard_normal()) for k in fit.FIGURES}
    rows.append({"run": d.name, **g})
    if i % 2:
      tps = p["prefill"]["tokens_per_s"] * np.exp(noise * rng.standard_normal())
      rows.append({"run": d.name, "phase": "prefill", "tokens_per_s": tps})
  return rows


def _fit(tmp_path, rows, hold_out=(), name="fitted.json") -> tuple[dict, dict]:
  (tmp_path / "rows.json").write_text(json.dumps(rows))
  (tmp_path / "base.json").write_text(json.dumps(BASE))
  out = tmp_path / name
  record = fit.fit_file(tmp_path / "rows.json", out, base=str(tmp_path / "base.json"),
                        hold_out=hold_out)  # fmt: skip
  return record, json.loads(out.read_text())


def test_fit_recovers_known_constants_and_predicts_held_out_rows(tmp_path):
  rows = _runs(tmp_path)  # 9 rows, 15 figures
  for r in rows[5:7]:
    r["role"] = "holdout"  # by the row's role, and by index below
  record, saved = _fit(tmp_path, rows, hold_out=(7, 8))
  n_hold = sum(len(set(r) & set(fit.FIGURES)) for r in rows[5:])
  assert record["figures"] == {"fit": 15 - n_hold, "holdout": n_hold}
  assert record["dof"] == 15 - n_hold - 2 and record["status"] == "validated"
  assert [r["role"] for r in record["rows"]] == ["fit"] * 5 + ["holdout"] * 4
  # 1% noise on each of ~10 figures: each constant within a few per cent of the truth
  for name, want in TRUTH.items():
    assert saved[name]["value"] == pytest.approx(want, rel=0.03), name
    assert "fitted by `mmfree measure --fit" in saved[name]["source"]
  rms = record["rms_log_residual"]
  assert 0.2 * NOISE < rms["fit"] < 3 * NOISE  # the noise, not a perfect (over-)fit
  assert rms["holdout"] < 3 * NOISE  # predicted, never seen, as close as the noise
  for r in record["rows"]:
    for k, v in r["measured"].items():
      res = r["residual"][k]
      assert res["ratio"] == pytest.approx(r["after"][k] / v)
      assert res["log"] == pytest.approx(np.log(res["ratio"]))
      assert abs(res["log"]) < 4 * NOISE, (r["run"], k)
  assert saved["fit"] == json.loads(json.dumps(record))
  hw = hardware.load_overrides(tmp_path / "fitted.json", base=HW)  # the record is not a constant
  assert hw.time.synop.value == saved["time.synop"]["value"]
  text = fit.table(record)
  assert text.startswith("validated: ") and "| holdout | tokens_per_s |" in text
  assert "after/measured" in text and "RMS log residual: fit" in text


def test_noiseless_rows_give_back_the_constants(tmp_path):
  record, saved = _fit(tmp_path, _runs(tmp_path, noise=0), hold_out=(0,))
  for name, want in TRUTH.items():
    assert saved[name]["value"] == pytest.approx(want, rel=1e-6), name
  assert max(record["rms_log_residual"].values()) < 1e-6


def test_held_out_rows_do_not_move_the_fit(tmp_path):
  rows = _runs(tmp_path)
  _, a = _fit(tmp_path, rows, hold_out=(0, 3), name="a.json")
  rows[0] = {**rows[0], "tokens_per_s": 3 * rows[0]["tokens_per_s"]}  # a wild held-out figure
  rec, b = _fit(tmp_path, rows, hold_out=(0, 3), name="b.json")
  assert [b[n]["value"] for n in fit.FREE] == [a[n]["value"] for n in fit.FREE]
  assert a["fit"]["rows"][0]["residual"]["tokens_per_s"]["log"] - rec["rows"][0]["residual"][
    "tokens_per_s"
  ]["log"] == pytest.approx(np.log(3))
  assert rec["status"] == "validated"  # the label says how it was tested, the residuals how well
  assert rec["rms_log_residual"]["holdout"] > 0.5
  _, c = _fit(tmp_path, rows, name="c.json")  # fitted, the wild figure moves the constants
  assert c["time.synop"]["value"] != pytest.approx(a["time.synop"]["value"], rel=0.05)


def test_as_many_figures_as_constants_is_calibrated_not_validated(tmp_path):
  rows = _runs(tmp_path, noise=0.1)
  record, saved = _fit(tmp_path, rows[:1])  # generation tokens/s and mJ/token: 2 for 2
  assert record["status"] == "calibrated, not validated" and record["dof"] == 0
  assert "no residual degrees of freedom" in record["why"] and "no held-out rows" in record["why"]
  assert "calibrated, not validated" in saved["time.synop"]["source"]
  assert fit.table(record).startswith("calibrated, not validated: ")
  record, _ = _fit(tmp_path, rows[:3], hold_out=(1, 2))  # held-out rows do not add freedom
  assert record["status"] == "calibrated, not validated" and record["dof"] == 0
  assert "no held-out rows" not in record["why"]
  assert record["rms_log_residual"]["holdout"] > 0
  record, _ = _fit(tmp_path, rows)  # freedom, but nothing held out
  assert record["status"] == "calibrated, not validated" and record["dof"] > 0
  assert record["why"].startswith("no held-out rows")


def test_roles_from_a_csv(tmp_path):
  rows = _runs(tmp_path)[:4]
  csv = ["run,phase,role,tokens_per_s,mj_per_token"]
  for i, r in enumerate(rows):
    mj = r.get("mj_per_token", "")
    csv.append(f"{r['run']},{r.get('phase', '')},{'holdout' if i == 1 else ''},"
               f"{r['tokens_per_s']},{mj}")  # fmt: skip
  (tmp_path / "rows.csv").write_text("\n".join(csv) + "\n")
  got = fit.read_rows(tmp_path / "rows.csv", hold_out=(3,))
  assert [(r.role, r.phase, sorted(r.measured)) for r in got] == [
    ("fit", "generation", ["mj_per_token", "tokens_per_s"]),
    ("holdout", "generation", ["mj_per_token", "tokens_per_s"]),
    ("fit", "prefill", ["tokens_per_s"]),
    ("holdout", "generation", ["mj_per_token", "tokens_per_s"]),
  ]


def test_cli_fit_with_held_out_rows(tmp_path, capsys):
  rows = _runs(tmp_path)
  (tmp_path / "rows.json").write_text(json.dumps(rows))
  (tmp_path / "base.json").write_text(json.dumps(BASE))
  out = tmp_path / "fitted.json"
  main(["measure", "--fit", str(tmp_path / "rows.json"), "--hold-out", "1,2",
        "--constants", str(tmp_path / "base.json"), "--out", str(out)])  # fmt: skip
  text = capsys.readouterr().out
  assert text.startswith("validated: ") and "| holdout |" in text and f"wrote {out}" in text
  assert [r["role"] for r in json.loads(out.read_text())["fit"]["rows"][:4]] == [
    "fit", "holdout", "holdout", "fit"
  ]  # fmt: skip
  with pytest.raises(SystemExit, match="--hold-out '1,x': expected 0-based row indices"):
    main(["measure", "--fit", str(tmp_path / "rows.json"), "--hold-out", "1,x"])


@pytest.mark.parametrize(
  "rows, free, hold_out, match",
  [
    ([{"run": "run0", "tokens_per_s": 1.0}], fit.FREE, (), "1 measured figures cannot fix 2"),
    ([{"run": "run0", "tokens_per_s": 1.0, "mj_per_token": 1.0}], fit.FREE, (0,),
     r"0 measured figures \(2 more held out\) cannot fix 2"),
    ([{"run": "run0", "tokens_per_s": 1.0}], ("core.memory",), (), r"cannot fit \['core.memory'\]"),
    ([{"run": "run0", "tokens_per_s": 1.0}], ("time.host",), (), "from zero"),
    ([{"run": "nowhere", "tokens_per_s": 1.0}], fit.FREE, (), "run `mmfree measure"),
    ([{"run": "run0"}], fit.FREE, (), "needs a positive tokens_per_s"),
    ([{"run": "run0", "tokens_per_s": -1.0}], fit.FREE, (), "needs a positive tokens_per_s"),
    ([{"run": "run0", "tokens_per_s": 1.0, "phase": "decode"}], fit.FREE, (), "phase 'decode'"),
    ([{"run": "run0", "tokens_per_s": 1.0, "role": "test"}], fit.FREE, (), "role 'test'"),
    ([{"run": "run0", "tokens_per_s": 1.0}], fit.FREE, (1,), r"--hold-out \[1\]: .* rows 0 to 0"),
    # two figures, but tokens/s does not depend on static power: energy.static is not fixed
    ([{"run": "run0", "tokens_per_s": 1.0}, {"run": "run1", "tokens_per_s": 2.0}], fit.FREE, (),
     "fix only 1 of the 2 free constants"),
  ],
)  # fmt: skip
def test_fit_refuses_bad_rows(tmp_path, rows, free, hold_out, match):
  _runs(tmp_path)
  (tmp_path / "rows.json").write_text(json.dumps(rows))
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    fit.fit_file(tmp_path / "rows.json", tmp_path / "out.json", free, hold_out=hold_out)
