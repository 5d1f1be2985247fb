"""The Lava environment's entry point: `python -m mmfree.loihi.lava.cli REQUEST.json`.

The request: {"bundle", "tokens", "max_new_tokens", "work", "hardware"}. Writes `work/result.npz`
(new, logits, and each population's outputs by token under `out/<name>`) and
`work/result.json` (seconds). On any error it prints the traceback and exits at once with status 1,
without stopping Lava (a stop after a failed run can hang): the caller kills the process group.
"""

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np


def main(argv: list[str]):
  req = json.loads(Path(argv[0]).read_text())
  from mmfree.loihi.lava import network

  work = Path(req["work"])
  r = network.run(Path(req["bundle"]), req["tokens"], req["max_new_tokens"], work,
                  req.get("hardware", False))  # fmt: skip
  arrays = {"new": r.new, "logits": r.logits}
  arrays |= {f"out/{k}": v for k, v in r.outputs.items()}
  np.savez(work / "result.npz", **arrays)
  (work / "result.json").write_text(json.dumps({"seconds": r.seconds}))


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
  sys.stdout.flush()
  os._exit(0)  # Lava's runtime threads must not hold the exit
