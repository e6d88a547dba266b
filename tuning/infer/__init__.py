"""Answers from a base and its adapters: generation.py generates rows that each name their adapter
(base and tuned in one batch), decoding.py is the greedy loop in which finished rows leave the
batch, adapters.py switches between base and adapter, playground.py holds the Playground's loaded
model (the Comparer), token_diff.py shows where two answers' tokens part."""
