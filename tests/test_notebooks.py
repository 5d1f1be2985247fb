"""The notebooks run end to end on a measured sweep and write their figures."""

import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from mmfree.cli import main
from mmfree.core.files import CONFIG

sys.path.insert(0, str(Path(__file__).parent))  # the lava-nc wheel owns the name `tests`
import shared_data  # noqa: E402

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SHARED_EVAL = shared_data.EVAL


def execute(name: str, sweep: Path, tmp_path: Path, monkeypatch) -> tuple[str, Path]:
  """Runs notebooks/`name` in a fresh kernel (cwd `tmp_path`) on `sweep`: its printed text and
  its figures directory. A cell that raises fails the test (CellExecutionError)."""
  figures = tmp_path / "figures"
  monkeypatch.setenv("MMFREE_SWEEP", str(sweep))  # the kernel inherits the environment
  monkeypatch.setenv("MMFREE_FIGURES", str(figures))
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  # `python3`: the venv's ipykernel spec; jupyter_client runs it with sys.executable
  client = NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  return "".join(o.get("text", "") for o in outputs), figures


def assert_figures(figures: Path, names: list[str]):
  for name in names:
    f = figures / name
    assert f.is_file() and f.stat().st_size > 0, f


@pytest.mark.slow
def test_accuracy_vs_energy(measured_sweep, tmp_path, monkeypatch):
  text, figures = execute("accuracy_vs_energy.ipynb", measured_sweep, tmp_path, monkeypatch)
  assert "2 of 2 runs done" in text
  assert "accuracy: eval.hw.loss, lower is better (MMFREE_ACCURACY=auto: not every" in text, text
  table = [line for line in text.splitlines() if line.startswith("|")]
  assert any(line.startswith("| act_bits=4 ") for line in table), text
  assert any(line.startswith("| base ") for line in table), text
  assert_figures(figures, ["accuracy_vs_energy.png"])


@pytest.mark.slow
def test_accuracy_vs_energy_tasks(measured_sweep, tmp_path, monkeypatch):
  """On the zero-shot task average: each run of a copy of the sweep scored on two tasks."""
  sweep = tmp_path / "sweep"
  shutil.copytree(measured_sweep, sweep)  # the fixture is shared: never written to
  for run in sorted(d for d in sweep.iterdir() if (d / CONFIG).is_file()):
    main(["eval", str(run), "--tasks", "arc_easy,winogrande", "--tasks-dir", str(SHARED_EVAL),
          "--limit", "6", "--precision", "hw"])  # fmt: skip
  monkeypatch.setenv("MMFREE_ACCURACY", "tasks")
  text, figures = execute("accuracy_vs_energy.ipynb", sweep, tmp_path, monkeypatch)
  assert "2 of 2 runs done" in text
  assert "accuracy: tasks.hw.avg_acc, higher is better (MMFREE_ACCURACY=tasks)" in text, text
  header = next(line for line in text.splitlines() if line.startswith("| design choice"))
  names = [c.strip() for c in header.split("|")]
  assert names[2:5] == ["task average (hw)", "arc_easy acc", "winogrande acc"], text
  assert_figures(figures, ["accuracy_vs_energy.png"])


@pytest.mark.slow
def test_sequence_scaling(measured_sweep, tmp_path, monkeypatch):
  text, figures = execute("sequence_scaling.ipynb", measured_sweep, tmp_path, monkeypatch)
  assert "2 of 2 runs done and measured" in text
  assert_figures(figures, ["prompt_scaling.png", "generation_vs_context.png"])
