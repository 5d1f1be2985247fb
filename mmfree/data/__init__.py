"""Corpora, tokenizers and the pipelines that turn them into training batches."""
