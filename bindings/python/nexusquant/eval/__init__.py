"""Evaluation side: KV quantisers, the scheme registry and the nq-eval harness."""
