"""Backends that run a bundle: the emulator in this process, or Lava in its own environment.

The Lava environment is a Python 3.10 virtual environment (lava-nc 0.10.0 imports on nothing newer)
made by `setup`. `run_lava` starts it as a subprocess in a session of its own and, whatever
happens, kills that whole process group afterwards: Lava forks a worker per process, and a failed
Lava run can leave them waiting forever.
"""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmfree.loihi import bundle_io, emulate
from mmfree.loihi.lava.network import ERROR

LAVA = "lava-nc==0.10.0"
VENV = Path(".venv-lava")  # the default, relative to the working directory
PYTHON = "3.10"
ENTRY = "mmfree.loihi.lava.cli"
PACKAGE = Path(__file__).resolve().parents[1]  # the mmfree package directory


def venv_python(venv: Path) -> Path:
  return Path(venv) / "bin" / "python"


def _site_packages(venv: Path) -> Path:
  return Path(venv) / "lib" / f"python{PYTHON}" / "site-packages"


def _ready(venv: Path) -> bool:
  """Lava and this checkout's mmfree import in `venv`."""
  py = venv_python(venv)
  if not py.is_file():
    return False
  code = "import lava.magma.core.run_configs, mmfree.loihi.program, mmfree; print(mmfree.__file__)"
  done = subprocess.run([py, "-c", code], capture_output=True, text=True)
  return done.returncode == 0 and Path(done.stdout.strip()).parent.resolve() == PACKAGE


def _uv() -> list[str]:
  uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` sets UV to its own executable
  return [uv] if uv else [sys.executable, "-m", "uv"]


def setup(venv: Path = VENV, log=print) -> Path:
  """Create (or check) the Lava environment: Python 3.10, lava-nc, and this checkout's mmfree
  linked into its site-packages without its dependencies (jax and flax have no place there)."""
  venv = Path(venv).absolute()
  venv.parent.mkdir(parents=True, exist_ok=True)
  with open(venv.with_name(f".{venv.name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent setups (parallel tests) wait for the first
    if _ready(venv):
      log(f"{venv}: ready ({LAVA}, mmfree from {PACKAGE})")
      return venv_python(venv)
    return _create(venv, log)


def _create(venv: Path, log) -> Path:
  env = {**os.environ, "UV_PYTHON_DOWNLOADS": os.environ.get("UV_PYTHON_DOWNLOADS", "never")}
  found = subprocess.run([*_uv(), "python", "find", "--no-project", PYTHON], capture_output=True,
                         text=True, env=env)  # fmt: skip
  if found.returncode != 0:
    raise RuntimeError(
      f"the Lava environment needs Python {PYTHON} (lava-nc 0.10.0 does not import on 3.11 or "
      f"newer), and none was found: install it (`pyenv install {PYTHON}`, `uv python install "
      f"{PYTHON}`, or your system's python{PYTHON} package), then run `mmfree lava setup` again"
    )
  python = found.stdout.strip().splitlines()[-1]
  log(f"creating {venv} with {python} and {LAVA}")
  subprocess.run([*_uv(), "venv", "--quiet", "--allow-existing", "--python", python, str(venv)],
                 check=True, env=env)  # fmt: skip
  subprocess.run([*_uv(), "pip", "install", "--quiet", "--python", str(venv_python(venv)), LAVA],
                 check=True, env=env)  # fmt: skip
  link = _site_packages(venv) / "mmfree"
  if link.is_symlink() or link.exists():
    link.unlink()
  link.symlink_to(PACKAGE, target_is_directory=True)
  if not _ready(venv):
    raise RuntimeError(f"{venv}: lava or mmfree still does not import there; remove it and rerun")
  log(f"{venv}: ready")
  return venv_python(venv)


def run_emulator(bundle: Path, tokens: list[int], max_new_tokens: int) -> tuple:
  """(emulate.Result with outputs recorded, seconds)."""
  emu = emulate.Emulator(bundle_io.load(bundle))
  t0 = time.perf_counter()
  r = emu.run([tokens], max_new_tokens, record=True)
  return r, {"run": time.perf_counter() - t0}


def run_lava(bundle: Path, tokens: list[int], max_new_tokens: int, venv: Path = VENV,
             timeout: float = 600, hardware: bool = False, on_start=None) -> tuple:  # fmt: skip
  """(emulate.Result, seconds) of the bundle run in Lava, in the environment `venv`.
  `on_start(popen)` sees the subprocess (the leader of its process group) once started."""
  py = venv_python(venv)
  if not py.is_file():
    raise FileNotFoundError(f"{venv}: no Lava environment: create it with `mmfree lava setup`")
  bundle = Path(bundle).absolute()
  with tempfile.TemporaryDirectory(prefix="mmfree-lava-") as d:
    work = Path(d)
    request = {"bundle": str(bundle), "tokens": [int(t) for t in tokens], "work": str(work),
               "max_new_tokens": max_new_tokens, "hardware": hardware}  # fmt: skip
    (work / "request.json").write_text(json.dumps(request))
    log = (work / "log.txt").open("w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen([py, "-m", ENTRY, str(work / "request.json")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
      if on_start is not None:
        on_start(proc)
      rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
      rc = None
    finally:
      kill_group(proc.pid)
      proc.wait()
    log.seek(0)
    tail = log.read()[-4000:]
    log.close()
    if (work / ERROR).is_file():  # a neuron model's own traceback (see lava/process.py)
      rc, tail = rc or 1, f"{tail}\n{(work / ERROR).read_text()[-4000:]}"
    if rc is None:
      raise TimeoutError(f"the Lava run took over {timeout:.0f} s and was killed:\n{tail}")
    if rc != 0:
      raise RuntimeError(f"the Lava run failed (exit status {rc}):\n{tail}")
    z = np.load(work / "result.npz")
    outputs = {k[4:]: z[k][None] for k in z.files if k.startswith("out/")}
    seconds = json.loads((work / "result.json").read_text())["seconds"]
    seconds["total"] = time.perf_counter() - t0
    prog = bundle_io.load(bundle)
    tokens_1xT = np.asarray([tokens])
    emu = emulate.Emulator(prog)
    activity = emu.activity(outputs)
    r = emulate.Result(tokens_1xT, z["new"][None], z["logits"][None], outputs, activity,
                       levers=emu.levers)  # fmt: skip
    return r, seconds


def kill_group(pgid: int, wait: float = 10.0):
  """SIGKILL every process left in the group (Lava's workers), and wait until none runs."""
  with contextlib.suppress(ProcessLookupError):
    os.killpg(pgid, signal.SIGKILL)
  deadline = time.monotonic() + wait
  while group_alive(pgid) and time.monotonic() < deadline:
    time.sleep(0.05)


def group_alive(pgid: int) -> bool:
  """Whether a process of group `pgid` still runs (zombies, which hold nothing, do not count)."""
  for stat in Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rpartition(")")[2].split()  # after "pid (comm)"
    except OSError:
      continue  # gone meanwhile
    if int(fields[2]) == pgid and fields[0] != "Z":
      return True
  return False


def mismatches(a: emulate.Result, b: emulate.Result) -> list[str]:
  """Where two runs of one program differ: tokens, logits, any population's integers."""
  bad = [k for k in ("new", "logits") if not np.array_equal(getattr(a, k), getattr(b, k))]
  for name in sorted(set(a.outputs) | set(b.outputs)):
    x, y = a.outputs.get(name), b.outputs.get(name)
    if x is None or y is None or x.shape != y.shape or not np.array_equal(x, y):
      bad.append(name)
  return bad
