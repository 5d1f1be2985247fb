"""Multi-process runs with `jax.distributed`: joined by hand, from the environment, or under SLURM.

One process per host (or per task): `initialize` before anything touches a device. By hand,
`--coordinator HOST:PORT --num-processes N --process-id I` (or MMFREE_COORDINATOR,
MMFREE_NUM_PROCESSES, MMFREE_PROCESS_ID); inside an `srun` step of more than one task JAX reads
SLURM's variables itself. CPU devices talk through gloo. Process 0 is the main one: it alone
writes metrics, progress and result files. A process that fails publishes its error in the
coordination service's key-value store; a watchdog thread in every other process prints it and
ends that process, so one failure stops the run instead of leaving the others waiting in a
collective until the heartbeat times out.
"""

import atexit
import contextlib
import os
import sys
import threading

import jax

ENV = {"coordinator": "MMFREE_COORDINATOR", "num_processes": "MMFREE_NUM_PROCESSES",
       "process_id": "MMFREE_PROCESS_ID"}  # fmt: skip
ERROR_KEY = "mmfree/error"
HEARTBEAT_S = 30  # a process silent this long (killed) ends the others
POLL_MS = 500  # the watchdog's wait for a failure report, between checks for a normal exit
_STOP = threading.Event()


def _from_env(name: str, value):
  if value is not None:
    return value
  raw = os.environ.get(ENV[name])
  if raw is None or name == "coordinator":
    return raw
  try:
    return int(raw)
  except ValueError:
    raise ValueError(f"{ENV[name]}={raw!r}: expected an integer") from None


def _under_srun() -> bool:
  """Inside a SLURM job step of more than one task (`srun`), not a batch script's shell."""
  return "SLURM_STEP_ID" in os.environ and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:  # fmt: skip
  """Join the run's processes; False (and nothing done) for a single-process run."""
  coordinator = _from_env("coordinator", coordinator)
  num_processes = _from_env("num_processes", num_processes)
  process_id = _from_env("process_id", process_id)
  given = {"--coordinator": coordinator, "--num-processes": num_processes,
           "--process-id": process_id}  # fmt: skip
  if coordinator is None and num_processes is None and process_id is None:
    if not _under_srun():
      return False
    kw = {}  # JAX's SLURM detection supplies all three
  else:
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise ValueError(f"a multi-process run needs {', '.join(missing)} too (or "
                       f"{', '.join(ENV.values())})")  # fmt: skip
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process-id {process_id} must be in [0, {num_processes})")
    if num_processes == 1:
      return False
    kw = {"coordinator_address": coordinator, "num_processes": num_processes,
          "process_id": process_id}  # fmt: skip
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kw, heartbeat_timeout_seconds=HEARTBEAT_S)
  watchdog = threading.Thread(target=_watch, daemon=True, name="mmfree-watchdog")
  watchdog.start()
  # before jax's own exit handler shuts the service down (atexit runs last-registered first): a
  # thread still waiting in the service's client at exit aborts the process
  atexit.register(lambda: (_STOP.set(), watchdog.join()))
  return True


def is_main() -> bool:
  return jax.process_index() == 0


def _client():
  from jax._src import distributed  # the coordination service's client: no public handle yet

  return distributed.global_state.client


def report_failure(e: BaseException):
  """Tell the other processes that this one failed, and why (a no-op in a single process)."""
  if jax.process_count() == 1 or _client() is None:
    return
  msg = f"process {jax.process_index()}: {type(e).__name__}: {e}"
  with contextlib.suppress(Exception):  # another process reported first: its message stands
    _client().key_value_set(ERROR_KEY, msg)


def _watch():
  """Wait for a failure report; print it and end this process."""
  while not _STOP.is_set():
    try:
      msg = _client().blocking_key_value_get(ERROR_KEY, POLL_MS)
    except Exception:  # timed out (or the service went away)
      continue
    if not msg.startswith(f"process {jax.process_index()}:"):
      print(f"mmfree: stopping, {msg}", file=sys.stderr, flush=True)
      os._exit(1)
    return
