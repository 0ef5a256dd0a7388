"""Importing this module warms the verifier caches; only the pool's fork server imports it.

Design: the ANTLR parser builds its prediction (DFA) cache lazily, so the first parses in a fresh
process cost ~100 ms each.  The fork server preloads this module once; every worker it forks --
including each replacement after a timeout -- starts with the warm cache, copy-on-write.
"""

from rlvr.verifiers.math_answer import answers_equal

_TYPICAL = [
    (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}"), (r"x^2 + 2x + 1", r"(x+1)^2"), (r"(3, \frac{\pi}{2})", r"(3, 90)"),
    (r"[-2, 7)", r"(-\infty, 0] \cup (3, \infty)"), (r"\{1 \pm \sqrt{5}, -2\}", r"1, -2"), (r"6 - 5i", r"\pi"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}"),
    (r"y = 2x + 3", r"5x - 7y + 11z + 4 = 0"), (r"\cot x", r"2k + 2"), (r"3 \sqrt{13}", r"\sqrt[3]{8}"),
]
for _gold, _pred in _TYPICAL:
    answers_equal(_pred, _gold)
