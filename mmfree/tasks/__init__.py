"""Zero-shot tasks as lm-evaluation-harness defines them, at every precision and on the program.

`docs` reads a task's examples (Hugging Face `datasets` or local JSONL), `requests` turns them
into (context, continuation) token pairs as lm-eval tokenizes them, `score` scores the pairs in
length-sorted, chunked batches, `metrics` aggregates `acc` / `acc_norm` / perplexity with their
stderr,
`suite` runs tasks × precisions, and `harness` is the `lm_eval.api.model.LM` adapter.
"""
