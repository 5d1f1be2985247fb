"""(context, continuation) strings → token ids, exactly as lm-evaluation-harness encodes them.

lm-eval (`TemplateLM._encode_pair`, v0.4) moves the context's trailing whitespace onto the
continuation, encodes context+continuation whole and the context alone, and scores the whole's
tokens after the context's length: a continuation whose first token merges with the context's
last characters is still scored from where the context's own tokens end. An empty context is
replaced by one prefix token (eos), unless the continuation starts with it.
"""

from collections.abc import Sequence

from mmfree.data.tokenizers import BYTE_FILE, HF_FILE, SP_FILE
from mmfree.tasks.docs import Doc

Pair = tuple[tuple[int, ...], tuple[int, ...]]  # (context ids, continuation ids)


def encode_pair(encode, context: str, continuation: str, prefix_id: int | None) -> Pair:
  if not context:
    cont = list(encode(continuation))
    if prefix_id is None:
      raise ValueError("an empty context needs a prefix token: the tokenizer has no eos")
    if cont and cont[0] == prefix_id:
      return tuple(cont[:1]), tuple(cont[1:])
    return (prefix_id,), tuple(cont)
  n = len(context) - len(context.rstrip())
  if n:
    context, continuation = context[:-n], context[-n:] + continuation
  whole, ctx = encode(context + continuation), encode(context)
  return tuple(ctx), tuple(whole[len(ctx) :])


def prefix_id(tokenizer) -> int | None:
  """lm-eval's prefix token: the end-of-text id (eos), else bos."""
  eos = getattr(tokenizer, "eos_id", None)
  return eos if eos is not None else getattr(tokenizer, "bos_id", None)


def encode_docs(tokenizer, docs: Sequence[Doc]) -> list[list[Pair]]:
  """Every doc's pairs as token ids, [doc][pair]."""
  if tokenizer is None:
    raise ValueError(
      f"the model has no tokenizer files ({SP_FILE}, {HF_FILE} or {BYTE_FILE}): tasks are "
      "text; load a model with its tokenizer"
    )
  p = prefix_id(tokenizer)
  return [[encode_pair(tokenizer.encode, c, x, p) for c, x in d.pairs] for d in docs]
