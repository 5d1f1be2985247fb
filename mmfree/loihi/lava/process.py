"""Processes and their fixed-point ProcessModels: the host's input, and one population of neurons.

A `Neurons` process is one population of a bundle: its model runs the population's fused neuron
kind with the emulator's integer kernels (`emulate.KINDS`), so Lava computes the same integers,
and sends under the population's event-driven levers (`Emulator.send`: the sigma-delta messages
travel through Lava's Dense processes, and the receiving model accumulates them).
Its data InPorts carry the summed fan-in of Lava `Dense` processes (one timestep late); a BitLinear
input's per-token exponent arrives on an `e_<port>` InPort straight from its source (no delay).
Each port delays what it receives so that every input of one token lines up (`delays`), and the
model computes only on timesteps that carry a token (`valid`, written by the host). Outputs are
written by token into `.npy` files as they are made: `Var.get` reads one element at a time. A
model that raises writes its traceback to `error` and kills the run's process group: Lava itself
would wait forever.
"""

import os
import signal
import traceback
from pathlib import Path

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from mmfree.loihi import bundle_io, emulate

PORTS = ("x", "a", "b", "f", "i", "g", "gate", "up")  # every port a neuron kind reads
SPIKE = 24  # graded-spike payload bits (Lava's messages)


class HostIn(AbstractProcess):
  """The host: at timestep t, row t−1 of the int32 file `path` [steps, n] (the quantized token
  embeddings). RingBuffer's data is fixed once compiled; generation writes each new token's row
  between runs."""

  def __init__(self, *, n: int, path: str):
    super().__init__(n=n, path=path)
    self.s_out = OutPort(shape=(n,))


class Neurons(AbstractProcess):
  """Population `name` of the bundle at `bundle`, computing the token that entered `depth`
  timesteps ago. `delays` maps each connected port (and `e_<port>`) to the timesteps it waits;
  `fracs` maps each port without an exponent port to the Q format of its messages."""

  def __init__(self, *, n: int, bundle: str, name: str, depth: int, delays: dict, fracs: dict,
               valid: str, out: str, error: str):  # fmt: skip
    super().__init__(n=n, bundle=bundle, name=name, depth=depth, delays=delays, fracs=fracs,
                     valid=valid, out=out, error=error)  # fmt: skip
    for port in PORTS:
      setattr(self, port, InPort(shape=(n,)))
      setattr(self, f"e_{port}", InPort(shape=(1,)))
    self.y = OutPort(shape=(n,))
    self.e = OutPort(shape=(1,))  # a BitLinear input's per-token exponent


@implements(proc=HostIn, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostInModel(PyLoihiProcessModel):
  s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=SPIKE)

  def __init__(self, proc_params):
    super().__init__(proc_params)
    self.rows = np.load(proc_params["path"], mmap_mode="r")  # the host writes as it generates

  def run_spk(self):
    self.s_out.send(np.asarray(self.rows[self.time_step - 1], np.int32))


def _in(bits: int) -> LavaPyType:
  return LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=bits)


@implements(proc=Neurons, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyNeuronsModel(PyLoihiProcessModel):
  x: PyInPort = _in(SPIKE)
  a: PyInPort = _in(SPIKE)
  b: PyInPort = _in(SPIKE)
  f: PyInPort = _in(SPIKE)
  i: PyInPort = _in(SPIKE)
  g: PyInPort = _in(SPIKE)
  gate: PyInPort = _in(SPIKE)
  up: PyInPort = _in(SPIKE)
  e_x: PyInPort = _in(8)
  e_a: PyInPort = _in(8)
  e_b: PyInPort = _in(8)
  e_f: PyInPort = _in(8)
  e_i: PyInPort = _in(8)
  e_g: PyInPort = _in(8)
  e_gate: PyInPort = _in(8)
  e_up: PyInPort = _in(8)
  y: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=SPIKE)
  e: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=8)

  def __init__(self, proc_params):
    super().__init__(proc_params)
    p = proc_params
    self.emu = emulate.Emulator(bundle_io.load(p["bundle"]))
    self.emu.reset(1)
    self.pop = self.emu.p.population(p["name"])
    self.depth, self.fracs = p["depth"], p["fracs"]
    self.lines = {port: [None] * d for port, d in p["delays"].items()}  # FIFOs, oldest first
    self.valid = np.load(p["valid"], mmap_mode="r")
    self.out = np.load(f"{p['out']}.npy", mmap_mode="r+")
    self.out_e = np.load(f"{p['out']}.e.npy", mmap_mode="r+")

  def _recv(self, port: str) -> np.ndarray:
    v = getattr(self, port).recv()
    line = self.lines[port]
    if not line:
      return v
    line.append(v)
    return line.pop(0)

  def run_spk(self):
    try:
      self._step()
    except BaseException:
      # Lava hangs when a model raises: leave the traceback for the host and end the whole run
      # (this process group) at once.
      Path(self.proc_params["error"]).write_text(f"{self.pop.name}:\n{traceback.format_exc()}")
      os.killpg(0, signal.SIGKILL)

  def _step(self):
    got = {port: self._recv(port) for port in self.lines}  # every connected port, every step
    n = self.pop.size
    y, e = np.zeros(n, np.int32), np.zeros(1, np.int32)
    token = self.time_step - self.depth  # 1-based entry timestep of the token computed now
    if token >= 1 and self.valid[token - 1]:
      ports = {}
      for port, v in got.items():
        if port.startswith("e_"):
          continue
        frac = -np.asarray(got[f"e_{port}"], np.int64)[None] if f"e_{port}" in got else None
        ports[port] = emulate.Msg(np.asarray(v, np.int64)[None], self.fracs.get(port, frac))
      m = self.emu.fire(self.pop, ports)  # sigma-delta ports: accumulated by the emulator's code
      self.out[token - 1] = m.q[0]
      if self.pop.kind == "bitlinear_in":
        e[0] = -np.asarray(m.frac).reshape(-1)[0]
        self.out_e[token - 1] = e[0]
      y = np.asarray(self.emu.send(self.pop.name, m.q)[0], np.int32)  # under its levers
    self.y.send(y)
    self.e.send(e)
