"""The tasks and their examples: multiple choice, partial-scoring schema and last-word cloze.

Each task reads either layout of a JSONL file (or the Hugging Face dataset lm-eval uses):
lm-eval's, i.e. the dataset's own fields (ARC's `question/choices/answerKey`, ...), and the
`query/choices/gold` (multiple choice) or `context_options/continuation/gold` (schema) layout of
already-formatted examples. Prompts are lm-eval's task YAMLs' (`lm_eval/tasks/*/`, v0.4):
"Question: {q}\\nAnswer:" for ARC and PIQA, the bare stem for OpenBookQA, HellaSwag's
`preprocess`, WinoGrande's blank split, LAMBADA's last word.
"""

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

CHOICE, SCHEMA, CLOZE = "multiple_choice", "schema", "cloze"


@dataclasses.dataclass(frozen=True)
class Doc:
  """One example: the (context, continuation) pairs to score and what the metrics need.

  `choices` are the strings lm-eval's `acc_norm` divides by the length of (a multiple-choice
  task's answers, a schema task's contexts); `gold` indexes them (a cloze task has one pair)."""

  pairs: tuple[tuple[str, str], ...]
  choices: tuple[str, ...]
  gold: int


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  kind: str
  hf: tuple[str, str | None, str]  # (dataset path, config name, split) as lm-eval loads it
  from_fields: Callable[[dict], Doc]  # the dataset's own fields (lm-eval's layout)
  files: tuple[str, ...] = ()  # other names its JSONL file may have in a --tasks-dir


def multiple_choice(context: str, answers, gold: int) -> Doc:
  """lm-eval's multiple_choice: each answer after the context and target_delimiter " "."""
  answers = tuple(answers)
  return Doc(tuple((context, " " + a) for a in answers), answers, int(gold))


def schema(contexts, continuation: str, gold: int) -> Doc:
  """lm-eval's multiple-input form (WinoGrande): one continuation after each context."""
  contexts = tuple(contexts)
  return Doc(tuple((c, " " + continuation) for c in contexts), contexts, int(gold))


def _arc(row: dict) -> Doc:
  labels = list(row["choices"]["label"])
  return multiple_choice(f"Question: {row['question']}\nAnswer:", row["choices"]["text"],
                         labels.index(row["answerKey"]))  # fmt: skip


def _openbookqa(row: dict) -> Doc:
  labels = list(row["choices"]["label"])
  return multiple_choice(row["question_stem"], row["choices"]["text"],
                         labels.index(row["answerKey"].lstrip()))  # fmt: skip


def _piqa(row: dict) -> Doc:
  return multiple_choice(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]],
                         row["label"])  # fmt: skip


def hellaswag_preprocess(text: str) -> str:
  """HellaSwag's cleaning of WikiHow artefacts, as lm-eval's `hellaswag/utils.py`."""
  text = text.strip().replace(" [title]", ". ")
  return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _hellaswag(row: dict) -> Doc:
  ctx = hellaswag_preprocess(row["activity_label"] + ": " + row["ctx_a"] + " "
                             + row["ctx_b"].capitalize())  # fmt: skip
  return multiple_choice(ctx, [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"]))


def _winogrande(row: dict) -> Doc:
  i = row["sentence"].index("_")
  contexts = [row["sentence"][:i] + row[f"option{k}"] for k in (1, 2)]
  return schema(contexts, row["sentence"][i + 1 :].strip(), {"1": 0, "2": 1}[row["answer"]])


def _lambada(row: dict) -> Doc:
  *words, last = row["text"].split(" ")
  target = " " + last  # lm-eval's loglikelihood requests add no delimiter: the target has it
  return Doc(((" ".join(words), target),), (target,), 0)


TASKS = {t.name: t for t in (
  Task("arc_easy", CHOICE, ("allenai/ai2_arc", "ARC-Easy", "test"), _arc),
  Task("arc_challenge", CHOICE, ("allenai/ai2_arc", "ARC-Challenge", "test"), _arc),
  Task("openbookqa", CHOICE, ("allenai/openbookqa", "main", "test"), _openbookqa,
       ("openbook_qa",)),
  Task("piqa", CHOICE, ("baber/piqa", None, "validation"), _piqa),
  Task("hellaswag", CHOICE, ("Rowan/hellaswag", None, "validation"), _hellaswag),
  Task("winogrande", SCHEMA, ("allenai/winogrande", "winogrande_xl", "validation"), _winogrande),
  Task("lambada", CLOZE, ("EleutherAI/lambada_openai", "default", "test"), _lambada,
       ("lambada_openai",)),
)}  # fmt: skip
ALL = tuple(TASKS)


def parse(names: str | tuple | list) -> tuple[str, ...]:
  """Task names from "a,b" or a sequence; `all` is every task; unknown names are refused."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  names = tuple(n for name in names for n in (ALL if name == "all" else (name,)))
  bad = [n for n in names if n not in TASKS]
  if bad:
    raise ValueError(f"unknown tasks {bad}: choose from {', '.join(ALL)} (or all)")
  return names


def _strings(v) -> list:
  if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
    raise TypeError(f"expected a list of strings, got {v!r}")
  return v


def to_doc(task: Task, row: dict, where: str) -> Doc:
  """A row in either layout → its Doc; a row in neither names the fields it lacks."""
  if not isinstance(row, dict):
    raise ValueError(f"{where}: a {task.name} example is a JSON object, not {row!r}")
  try:
    if "context_options" in row and task.kind == SCHEMA:
      doc = schema(_strings(row["context_options"]), row["continuation"], row["gold"])
    elif "query" in row and "choices" in row and task.kind == CHOICE:
      doc = multiple_choice(row["query"], _strings(row["choices"]), row["gold"])
    else:
      doc = task.from_fields(row)
  except (KeyError, ValueError, TypeError, AttributeError) as e:
    raise ValueError(
      f"{where}: not a {task.name} example in lm-eval's layout (the dataset's own fields) nor "
      f"in the query/choices/gold or context_options/continuation/gold layout ({type(e).__name__}"
      f": {e}); fields present: {sorted(row)}"
    ) from e
  if not 0 <= doc.gold < len(doc.choices):
    raise ValueError(f"{where}: gold {doc.gold} is not an index of its {len(doc.choices)} choices")
  return doc


def find_file(task: Task, tasks_dir: Path) -> Path:
  for name in (task.name, *task.files):
    if (path := Path(tasks_dir) / f"{name}.jsonl").exists():
      return path
  names = ", ".join(f"{n}.jsonl" for n in (task.name, *task.files))
  raise FileNotFoundError(f"{tasks_dir}: no JSONL file for task {task.name} (looked for {names})")


def read_jsonl(task: Task, path: Path, limit: int | None) -> list[Doc]:
  docs = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if limit is not None and len(docs) >= limit:
        break
      if line.strip():
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{i}: not JSON ({e})") from e
        docs.append(to_doc(task, row, f"{path}:{i}"))
  return docs


def read_hf(task: Task, limit: int | None) -> tuple[list[Doc], str]:
  """The task's Hugging Face dataset (as lm-eval loads it) and its fingerprint."""
  import datasets  # the hub path only: local files need no `datasets` start-up

  path, name, split = task.hf
  try:
    ds = datasets.load_dataset(path, name, split=split)
  except Exception as e:  # offline, gated, renamed: say what to do instead
    raise RuntimeError(
      f"task {task.name}: could not load the Hugging Face dataset {path} ({name}, {split}): "
      f"{type(e).__name__}: {e}. Without the hub, pass --tasks-dir DIR (eval.tasks_dir) with "
      f"{task.name}.jsonl in lm-eval's or the query/choices/gold layout"
    ) from e
  n = len(ds) if limit is None else min(limit, len(ds))
  where = f"{path}[{split}]"
  return [to_doc(task, ds[i], f"{where} row {i}") for i in range(n)], ds._fingerprint


def load(name: str, tasks_dir: str | Path | None = None, limit: int | None = None):
  """(docs, source): the first `limit` examples of a task and the identity of where they came
  from (a file's content hash, or a dataset's fingerprint), for provenance."""
  task = TASKS[name]
  if tasks_dir:
    path = find_file(task, Path(tasks_dir))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return read_jsonl(task, path, limit), {"file": str(path), "sha256": sha}
  docs, fingerprint = read_hf(task, limit)
  return docs, {"hf": list(task.hf), "fingerprint": fingerprint}
