"""Simulated shoppers: a click model driven by hidden judgments, shopping over HTTP.

Owns the position-based click model and the session driver that searches a running API and
sends its events back (``shoppers``), for experiments that measure how well the online loop
recovers judgments it never sees.

May import: ``trainer.training`` (the query split of ``data``) and ``service`` (domain values).
Not the online loop, which it measures from outside, nor the CLI.
"""
