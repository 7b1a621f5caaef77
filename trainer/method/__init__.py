"""OSPO itself: the math of turning one retrieval reward into token-level credit.

Owns cutting a rewrite into players (``segmentation``), Shapley / Owen credit of each player
from a value function of coalition texts (``attribution``), and the token advantages and
clipped surrogate loss built from that credit (``ospo``). Pure functions on numpy (torch in the
loss only), tested against brute-force definitions.

May import: nothing of the trainer outside this package, and nothing of ``service``: the value
function a rewrite is credited with is passed in by the caller (trainer.training).
"""
