"""Published figures this project compares against: values with their sources, never measured here.

`confidence`: primary = the paper's own abstract or page; secondary = third-party summaries of the
paper, not checked against its tables (as catalogued in the project's reference notes).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Figure:
  value: float | tuple
  unit: str
  what: str
  source: str
  confidence: str


MMFREE_V7 = "Zhu et al., arXiv:2406.02528 v6/v7, hardware section"
MMFREE_TABLE1 = ("Zhu et al., arXiv:2406.02528, Table 1 (zero-shot, lm-evaluation-harness), as "
                 "transcribed in the public repository fajarkraton/fajarquant "
                 "(python/phase_d/scripts/repro_upstream.py); not checked against the paper's PDF "
                 "here")  # fmt: skip
LOIHI2_LLM = "Abreu et al., arXiv:2503.18002"

FIGURES = {
  "loihi2_370m_tokens_per_s": Figure(
    59.4, "tokens/s", "MatMul-free LM 370M, multi-chip Loihi 2 (single-block measurements plus "
    "~20% inter-chip adjustment)", MMFREE_V7, "secondary"),
  "loihi2_370m_mj_per_token": Figure(
    70.8, "mJ/token", "MatMul-free LM 370M, multi-chip Loihi 2", MMFREE_V7, "secondary"),
  "jetson_qwen2_500m_tokens_per_s": Figure(
    (13.4, 14.1), "tokens/s", "Qwen2-500M transformer on a Jetson Orin Nano (range over "
    "generation lengths)", MMFREE_V7, "secondary"),
  "jetson_qwen2_500m_mj_per_token": Figure(
    (785.0, 912.0), "mJ/token", "Qwen2-500M transformer on a Jetson Orin Nano (range over "
    "generation lengths)", MMFREE_V7, "secondary"),
  "throughput_ratio": Figure(
    3.0, "x", "Loihi 2 370M tokens/s over transformer LLMs on an edge GPU, up to", LOIHI2_LLM,
    "primary"),
  "energy_ratio": Figure(
    2.0, "x", "less energy per token on Loihi 2 than transformer LLMs on an edge GPU",
    LOIHI2_LLM, "primary"),
  "ttft_ratio_500": Figure(
    6.6, "x", "lower time-to-first-token on Loihi 2 than on an edge GPU, 500-token prompt, "
    "batch 1", LOIHI2_LLM, "secondary"),
  "mmfree_370m_zero_shot": Figure(
    (("arc_easy", 42.6), ("arc_challenge", 23.8), ("hellaswag", 32.8), ("openbookqa", 28.4),
     ("piqa", 63.0), ("winogrande", 49.2), ("average", 40.3)), "% accuracy",
    "MatMul-free LM 370M (15B tokens), zero-shot accuracy per task; the transcription says "
    "acc_norm for ARC, HellaSwag and OpenBookQA, acc for PIQA and WinoGrande", MMFREE_TABLE1,
    "secondary"),
}  # fmt: skip


def cite(name: str) -> str:
  f = FIGURES[name]
  return f"{f.source} ({f.confidence})"
