"""rlvr: distributed RLVR post-training (TP-Schedule, arXiv 2605.25381)."""
