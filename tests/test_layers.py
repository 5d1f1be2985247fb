"""The layers of DESIGN.md: imports only go down (import-linter, function-level imports included),
and the chip side (`mmfree/loihi`) and the commands that only need it run with jax blocked."""

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LINT = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]

# Run before anything else in a child process: `import jax` (and its kin) fails there.
BLOCK = textwrap.dedent("""
  import importlib.abc, sys
  class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] in {"jax", "jaxlib", "flax", "optax", "orbax", "grain"}:
        raise ImportError(f"{name} is blocked in this process")
  sys.meta_path.insert(0, Blocked())
""")


def _lint(cwd: Path, env=None) -> subprocess.CompletedProcess:
  return subprocess.run(LINT, cwd=cwd, capture_output=True, text=True, env=env)


def test_the_contracts_hold():
  r = _lint(ROOT)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "0 broken" in r.stdout


@pytest.mark.parametrize(
  "module, line",
  [
    ("core/files.py", "  from mmfree import results"),  # a leaf reaching up, inside a function
    ("loihi/cost.py", "  import jax"),  # the chip side loading jax
    ("quant/hw.py", "  from mmfree.models import lm"),  # a library calling up a library
  ],
)
def test_an_upward_import_breaks_a_contract(tmp_path, module, line):
  shutil.copytree(ROOT / "mmfree", tmp_path / "mmfree")
  shutil.copy(ROOT / "pyproject.toml", tmp_path)
  path = tmp_path / "mmfree" / module
  path.write_text(path.read_text() + f"\n\ndef _upward():\n{line}\n")
  env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
  r = _lint(tmp_path, env)
  assert r.returncode != 0 and "BROKEN" in r.stdout, r.stdout + r.stderr


def _blocked(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], cwd=cwd,
                        capture_output=True, text=True)  # fmt: skip


def test_every_loihi_module_imports_without_jax():
  r = _blocked("""
    import importlib, pkgutil, mmfree.loihi
    names = [m.name for m in pkgutil.walk_packages(mmfree.loihi.__path__, "mmfree.loihi.")]
    assert len(names) > 15, names
    for name in names:
      try:
        importlib.import_module(name)
      except ModuleNotFoundError as e:
        # the Lava process models need lava itself (the Lava environment has it, not this one)
        assert e.name.split(".")[0] == "lava", (name, e)
    print(len(names))
  """)
  assert r.returncode == 0, r.stderr
  assert int(r.stdout.split()[-1]) > 15


def test_emulate_measure_and_fit_run_with_jax_blocked(calibrated_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(calibrated_run, run)
  lowered = subprocess.run([sys.executable, "-m", "mmfree.cli", "lower", str(run)],
                           capture_output=True, text=True)  # fmt: skip
  assert lowered.returncode == 0, lowered.stderr
  rows = tmp_path / "rows.json"
  rows.write_text(f'[{{"run": "{run}", "tokens_per_s": 100.0, "mj_per_token": 1.0}}]')
  commands = {
    "emulate": ["emulate", str(run), "--prompt", "The", "--max-new-tokens", "2"],
    "measure": ["measure", str(run), "--prompt", "The", "--max-new-tokens", "2"],
    "measure --fit": ["measure", "--fit", str(rows), "--out", str(tmp_path / "fitted.json")],
  }
  for name, argv in commands.items():
    t0 = time.perf_counter()
    r = _blocked(f"from mmfree.cli import main; main({argv!r})", tmp_path)
    print(f"{name}: {time.perf_counter() - t0:.2f} s with jax blocked")
    assert r.returncode == 0, (name, r.stderr)
  assert (run / "measure.json").is_file() and (tmp_path / "fitted.json").is_file()
