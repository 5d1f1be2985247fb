"""The program bundle: round trip, storage choice, mmap, summary, validation, atomic save."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from mmfree.loihi import bundle_io as bd
from mmfree.loihi import program as pg


def _ternary(rng, shape, zeros):
  w = rng.choice(np.array([-1, 1], np.int8), size=shape)
  return np.where(rng.random(shape) < zeros, 0, w).astype(np.int8)


def _program(**changes) -> pg.Program:
  """Host → norm (8) → mlgru (64) → readout (200) → host."""
  rng = np.random.default_rng(0)
  arrays = {
    "embed": rng.integers(-128, 128, size=(50, 8)).astype(np.int8),
    "norm_mlgru": _ternary(rng, (8, 64), zeros=1 / 3),
    "mlgru_readout": _ternary(rng, (64, 200), zeros=0.95),
    "logits": np.eye(200, dtype=np.int8),
    "norm.gamma": rng.integers(-2048, 2048, size=8).astype(np.int16),
    "host.table": rng.standard_normal((4, 3)).astype(np.float32),  # not referenced: kept as is
  }
  pops = (
    pg.Population(
      "norm",
      "rmsnorm",
      8,
      0,
      {"shift": 3, "eps": 1e-5, "round": "floor"},
      {"gamma": "norm.gamma"},
      {},
      8,
    ),
    pg.Population("mlgru", "mlgru", 64, 0, {"lut": [0, 64, 128], "fused": True}, {}, {"h": 16}, 8),
    pg.Population("readout", "readout", 200, None, {}, {}, {"acc": 24}, 32),
  )
  syns = (
    pg.Synapses("embed", "host", "norm", "x", 50, 8, 8, 0, "embed"),
    pg.Synapses("norm_mlgru", "norm", "mlgru", "f", 8, 64, 2, 0, "norm_mlgru"),
    pg.Synapses("mlgru_readout", "mlgru", "readout", "x", 64, 200, 2, -1, "mlgru_readout"),
    pg.Synapses("logits", "readout", "host", "logits", 200, 200, 2, 0, "logits"),
  )
  kw = dict(
    version=pg.VERSION,
    model={"hidden": 8, "layers": 1},
    quant={"act_bits": 8},
    io={"embedding": "host", "sampling": "host", "lm_head": "chip"},
    fusions=["mlgru_gate_silu"],
    provenance=pg.provenance("runs/test", {"act_bits": 8}),
    ranges=[],
    populations=pops,
    synapses=syns,
    arrays=arrays,
  )
  return pg.Program(**(kw | changes))


def _replace_entry(p, field, which, **changes):
  entries = tuple(
    dataclasses.replace(e, **changes) if e.name == which else e for e in getattr(p, field)
  )
  return dataclasses.replace(p, **{field: entries})


def _edit_manifest(bundle, fn):
  path = bundle / pg.MANIFEST
  m = json.loads(path.read_text())
  fn(m)
  path.write_text(json.dumps(m))


def test_round_trip_and_storage_choice(tmp_path):
  p = _program()
  bd.save(p, tmp_path / "prog")
  m = json.loads((tmp_path / "prog" / pg.MANIFEST).read_text())
  assert m["format"] == pg.FORMAT and m["version"] == pg.VERSION
  storage = {s["name"]: s["storage"] for s in m["synapses"]}
  assert storage == {
    "embed": "dense",
    "norm_mlgru": "dense",
    "mlgru_readout": "csr",
    "logits": "csr",
  }
  files = sorted(f.name for f in (tmp_path / "prog" / "arrays").iterdir())
  assert "norm_mlgru.npy" in files and "mlgru_readout.npy" not in files
  assert {"mlgru_readout.indptr.npy", "mlgru_readout.indices.npy", "mlgru_readout.data.npy"} <= set(
    files
  )
  q = bd.load(tmp_path / "prog")
  assert q.populations == p.populations and q.synapses == p.synapses
  assert (q.model, q.quant, q.io, q.fusions, q.provenance) == (
    p.model,
    p.quant,
    p.io,
    p.fusions,
    p.provenance,
  )
  for s in p.synapses:
    np.testing.assert_array_equal(q.weights(s.name), p.arrays[s.weights])
    assert q.weights(s.name).dtype == np.int8 and q.nnz(s.name) == np.count_nonzero(
      p.arrays[s.weights]
    )
    np.testing.assert_array_equal(
      q.nnz_per_target(s.name), np.count_nonzero(p.arrays[s.weights], 0)
    )
  csr = q.arrays["mlgru_readout"]
  assert isinstance(csr, pg.Csr) and csr.indptr.dtype == np.int64 and csr.indices.dtype == np.int32
  for key in ("norm.gamma", "host.table"):
    np.testing.assert_array_equal(q.arrays[key], p.arrays[key])
    assert q.arrays[key].dtype == p.arrays[key].dtype
  assert q.population("mlgru").state_bits == {"h": 16}
  assert [s.name for s in q.fan_in("readout")] == ["mlgru_readout"]
  # A program in memory can hold CSR weights; saving it again gives the same bundle.
  bd.save(q, tmp_path / "again")
  r = bd.load(tmp_path / "again", mmap=False)
  np.testing.assert_array_equal(r.weights("mlgru_readout"), p.arrays["mlgru_readout"])


def test_mmap(tmp_path):
  bd.save(_program(), tmp_path / "prog")
  assert isinstance(bd.load(tmp_path / "prog").weights("norm_mlgru"), np.memmap)
  w = bd.load(tmp_path / "prog", mmap=False).weights("norm_mlgru")
  assert not isinstance(w, np.memmap) and w.flags.writeable


def test_summary():
  p = _program()
  groups = {s.name: p.arrays[s.weights] for s in p.synapses}
  nnz = {k: int((w != 0).sum()) for k, w in groups.items()}
  weights = sum(w.size for w in groups.values())
  csr = {k: 8 * (w.shape[1] + 1) + 5 * nnz[k] for k, w in groups.items()}
  sparse = [k for k in groups if csr[k] < groups[k].size]
  assert sparse == ["mlgru_readout", "logits"]
  assert bd.summary(p) == {
    "populations": 3,
    "neurons": 8 + 64 + 200,
    "synapse_groups": 4,
    "weights": 50 * 8 + 8 * 64 + 64 * 200 + 200 * 200,
    "nonzero": sum(nnz.values()),
    "zero_share": pytest.approx(1 - sum(nnz.values()) / weights),
    "bytes": {
      "dense": 50 * 8 + 8 * 64,
      "csr": csr["mlgru_readout"] + csr["logits"],
      "other": 8 * 2 + 4 * 3 * 4,
    },
  }


def test_provenance_records_inputs_and_the_identity_is_the_content(tmp_path):
  prov = pg.provenance("runs/x", {"checkpoint": {"step": 3}, "quant": "ab"})
  assert prov["source"] == "runs/x" and prov["created"].endswith("+00:00")
  assert prov["inputs"] == {"checkpoint": {"step": 3}, "quant": "ab"}
  p = _program()
  a = bd.save(p, tmp_path / "a")
  b = bd.save(dataclasses.replace(p, provenance={**p.provenance, "created": "another time"}),
              tmp_path / "b")  # fmt: skip
  assert bd.content_sha256(a) == bd.content_sha256(b)  # a timestamp identifies nothing
  key = next(iter(p.arrays))
  changed = {**p.arrays, key: p.arrays[key] + 1}
  c = bd.save(dataclasses.replace(p, arrays=changed), tmp_path / "c")
  assert bd.content_sha256(c) != bd.content_sha256(a)


@pytest.mark.parametrize(
  "make, match",
  [
    (
      lambda p: _replace_entry(p, "populations", "norm", kind="bogus"),
      r"population 'norm': unknown kind 'bogus'",
    ),
    (
      lambda p: dataclasses.replace(
        p, arrays={k: v for k, v in p.arrays.items() if k != "norm.gamma"}
      ),
      r"population 'norm': arrays\['gamma'\] names array 'norm.gamma', which is missing",
    ),
    (
      lambda p: _replace_entry(p, "synapses", "norm_mlgru", source="nope"),
      r"synapses 'norm_mlgru': source 'nope' is neither a population nor 'host'",
    ),
    (
      lambda p: _replace_entry(p, "synapses", "norm_mlgru", n_out=65),
      r"synapses 'norm_mlgru': n_out is 65, but its target 'mlgru' has 64 neurons",
    ),
    (
      lambda p: dataclasses.replace(
        p, arrays=p.arrays | {"norm_mlgru": np.full((8, 64), 2, np.int8)}
      ),
      r"synapses 'norm_mlgru': weights \('norm_mlgru'\) span \[2, 2\], outside the 2-bit range "
      r"\[-2, 1\]",
    ),
    (
      lambda p: dataclasses.replace(
        p, arrays=p.arrays | {"norm_mlgru": np.zeros((8, 64), np.int16)}
      ),
      r"weights \('norm_mlgru'\) must be int8 \[n_in, n_out\]=\[8, 64\], got int16",
    ),
    (
      lambda p: dataclasses.replace(p, arrays=p.arrays | {"norm.gamma": np.zeros(7, np.int16)}),
      r"population 'norm': arrays\['gamma'\] must be integers \[size=8\], got int16 \[7\]",
    ),
    (
      lambda p: _replace_entry(p, "populations", "mlgru", out_bits=32),
      r"population 'mlgru': out_bits 32 > 24",
    ),
    (
      lambda p: _replace_entry(p, "populations", "mlgru", name="norm"),
      r"Population names must be unique, repeated: \['norm'\]",
    ),
    (lambda p: dataclasses.replace(p, io=p.io | {"lm_head": "gpu"}), r"program: io must map"),
    (
      lambda p: dataclasses.replace(p, version=pg.VERSION + 1),
      rf"program: version {pg.VERSION + 1}",
    ),
    (lambda p: dataclasses.replace(p, ranges=[1]), r"program: ranges must be a list of objects"),
    (lambda p: dataclasses.replace(p, model={"x": object()}), r"program model is not plain JSON"),
  ],
)
def test_validation_in_memory(make, match):
  with pytest.raises(ValueError, match=match):
    make(_program())


def test_entry_validation():
  with pytest.raises(ValueError, match=r"population 'p': size must be int, got 3.0"):
    pg.Population("p", "glu", 3.0, 0, {}, {}, {}, 8)
  with pytest.raises(ValueError, match=r"population 'p': params\['x'\] must be a number"):
    pg.Population("p", "glu", 3, 0, {"x": {"y": 1}}, {}, {}, 8)
  with pytest.raises(ValueError, match=r"synapses 's': weight_bits must be in \[2, 8\]"):
    pg.Synapses("s", "a", "b", "x", 1, 1, 9, 0, "w")


@pytest.mark.parametrize(
  "edit, match",
  [
    (
      lambda m: m.update(version=pg.VERSION + 1),
      rf"written by a newer mmfree \(format version {pg.VERSION + 1}; this one reads "
      rf"{pg.VERSION}\): "
      r"upgrade mmfree, or "
      r"re-run `mmfree lower`",
    ),
    (
      lambda m: m.update(version=1),
      rf"written by an older mmfree \(format version 1; this one reads {pg.VERSION}\): re-run "
      r"`mmfree lower`",
    ),
    (lambda m: m.update(format="other"), r"format is not 'mmfree-loihi-program'"),
    (lambda m: m.pop("io"), r"keys must be"),
    (
      lambda m: m["populations"][0].update(kind="bogus"),
      r"population 'norm': unknown kind 'bogus'",
    ),
    (
      lambda m: m["populations"][1].pop("state_bits"),
      r"population 'mlgru': missing \['state_bits'\]",
    ),
    (lambda m: m["populations"][1].update(size="64"), r"population 'mlgru': size must be int"),
    (lambda m: m["synapses"][1].update(target="nope"), r"synapses 'norm_mlgru': target 'nope'"),
    (lambda m: m["synapses"][1].update(storage="zip"), r"storage must be one of"),
    (lambda m: m["synapses"][1].update(weights="../x"), r"not plain file names"),
    (lambda m: m["arrays"]["norm.gamma"].update(shape=[9]), r"norm.gamma.npy: holds int16 \[8\]"),
  ],
)
def test_validation_on_load(tmp_path, edit, match):
  bd.save(_program(), tmp_path / "prog")
  _edit_manifest(tmp_path / "prog", edit)
  with pytest.raises(ValueError, match=match) as e:
    bd.load(tmp_path / "prog")
  assert "prog" in str(e.value)  # the message names the file


def test_missing_files(tmp_path):
  with pytest.raises(
    FileNotFoundError, match=r"program.json: no program bundle here.*mmfree lower"
  ):
    bd.load(tmp_path / "nothing")
  bd.save(_program(), tmp_path / "prog")
  (tmp_path / "prog" / "arrays" / "mlgru_readout.indices.npy").unlink()
  with pytest.raises(FileNotFoundError, match=r"mlgru_readout.indices.npy: array file missing"):
    bd.load(tmp_path / "prog")
  (tmp_path / "prog" / "arrays" / "norm_mlgru.npy").write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"norm_mlgru.npy: not a readable .npy file"):
    bd.load(tmp_path / "prog")


def test_atomic_save(tmp_path, monkeypatch):
  old = _program()
  bd.save(old, tmp_path / "prog")
  new = dataclasses.replace(old, arrays=old.arrays | {"norm_mlgru": -old.arrays["norm_mlgru"]})
  calls = []

  def failing(path, a):
    calls.append(path)
    if len(calls) == 3:
      raise OSError("disk full")
    np.save(path, a)

  monkeypatch.setattr(bd, "_write_npy", failing)
  with pytest.raises(OSError, match="disk full"):
    bd.save(new, tmp_path / "prog")
  monkeypatch.undo()
  np.testing.assert_array_equal(
    bd.load(tmp_path / "prog").weights("norm_mlgru"), old.arrays["norm_mlgru"]
  )
  assert sorted(f.name for f in tmp_path.iterdir()) == ["prog"]  # no temporary left behind
  bd.save(new, tmp_path / "prog")  # a complete save replaces the bundle
  np.testing.assert_array_equal(
    bd.load(tmp_path / "prog").weights("norm_mlgru"), new.arrays["norm_mlgru"]
  )
  assert sorted(f.name for f in tmp_path.iterdir()) == ["prog"]


def test_save_refuses_to_replace_other_directories(tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text("{}")
  with pytest.raises(FileExistsError, match="not a program bundle"):
    bd.save(_program(), tmp_path / "run")
  assert (tmp_path / "run" / "config.json").exists()


def test_numpy_only():
  code = (
    "import sys, mmfree.loihi.program, mmfree.loihi.hardware, mmfree.loihi.mapping, "
    "mmfree.loihi.emulate; "
    "assert not any(m.startswith(('jax', 'flax')) for m in sys.modules)"
  )
  subprocess.run([sys.executable, "-c", code], check=True)
