"""What moves each sweep point's predicted energy: activity alone, or the kinds and widths too.

  uv run python scripts/energy_levers.py runs/quant_ablation_ptq [--baseline base]

Per measured point of a sweep (or run) directory: its `hw` validation loss, its prediction
(measure.json's workload through `cost.predict` under the constants it was measured with), and
the same workload priced as activity alone: every neuron update a LIF update
(`opcount.LIF_INSTRUCTIONS`), every message a header-only spike. Both against the baseline point in
the same table: a design choice whose full ratio differs from its activity-only ratio moves energy
through instruction counts or message widths, not through the zeros it produces.
"""

import argparse
import dataclasses
import json
from pathlib import Path

from mmfree import results
from mmfree.loihi import cost, hardware, opcount


def activity_only(w: cost.Workload) -> cost.Workload:
  """`w` with every update a LIF update and every message header-only."""
  n = len(w.populations)
  return dataclasses.replace(w, instructions=(opcount.LIF_INSTRUCTIONS,) * n,
                             message_bits=(0,) * n)  # fmt: skip


def prices(run: Path) -> dict:
  """Generation mJ/token and tokens/s, in full and activity-only, with the dynamic parts."""
  m = json.loads((run / "measure.json").read_text())
  hw = hardware.replace(hardware.DEFAULT, {k: c["value"] for k, c in m["constants"].items()})
  w = cost.Workload.from_json(m["workload"])
  full, flat = cost.predict(w, hw, prompts=()), cost.predict(activity_only(w), hw, prompts=())
  e = full["energy_mj_per_token"]
  return {
    "mj": full["generation"]["mj_per_token"],
    "mj_activity": flat["generation"]["mj_per_token"],
    "tokens_per_s": full["generation"]["tokens_per_s"],
    "tokens_per_s_activity": flat["generation"]["tokens_per_s"],
    "dynamic_mj": e["dynamic"],
    "dynamic_mj_activity": flat["energy_mj_per_token"]["dynamic"],
    "updates_mj": e["updates"],
    "messages_mj": e["messages"] + e["interchip"],
    "chips": full["resources"]["chips"],
  }


def table(d: Path, baseline: str) -> str:
  df = results.load(d)
  rows = {}
  for _, r in df.iterrows():
    run = Path(r["path"])
    if (run / "measure.json").is_file():
      label = r["name"].rsplit("-", 1)[0]  # a sweep point's name: its label, then its hash
      rows[label] = {"loss": r.get("eval.hw.loss"), **prices(run)}
  if baseline not in rows:
    raise SystemExit(f"{d}: no measured point named {baseline!r} (have {sorted(rows)})")
  b = rows[baseline]
  lines = [
    "| point | hw loss | mJ/token | × base | activity-only × base | dynamic mJ | × base "
    "| activity-only × base | updates mJ | messages mJ | tokens/s × base | activity-only × base |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, x in rows.items():
    lines.append(
      f"| {name} | {x['loss']:.3f} | {x['mj']:.4g} | {x['mj'] / b['mj']:.3f} | "
      f"{x['mj_activity'] / b['mj_activity']:.3f} | {x['dynamic_mj']:.4g} | "
      f"{x['dynamic_mj'] / b['dynamic_mj']:.3f} | "
      f"{x['dynamic_mj_activity'] / b['dynamic_mj_activity']:.3f} | {x['updates_mj']:.3g} | "
      f"{x['messages_mj']:.3g} | {x['tokens_per_s'] / b['tokens_per_s']:.3f} | "
      f"{x['tokens_per_s_activity'] / b['tokens_per_s_activity']:.3f} |"
    )
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("dir", type=Path, help="a sweep directory (or one run directory)")
  ap.add_argument("--baseline", default="base", help="the point the ratios are against")
  args = ap.parse_args()
  print(table(args.dir, args.baseline))


if __name__ == "__main__":
  main()
