"""Importing this module warms the verifier caches; only the pool's fork server imports it.

Design: the ANTLR parser builds its prediction (DFA) cache lazily, so the first parses of each
answer shape in a fresh process cost ~20-100 ms.  The fork server preloads this module once
(about a second); every worker it forks -- including each replacement after a timeout -- starts
with the warm cache, copy-on-write.  The shapes are generic MATH answer styles, not test answers.
"""

from rlvr.verifiers.math_answer import answers_equal

_SHAPES = [
    (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}"), (r"2\sqrt{7}", r"\sqrt[3]{16}"),
    (r"-\frac{\pi}{4}", r"3\pi"),
    (r"x^2 + 2x + 1", r"(x+1)^2"), (r"3x^3 - 2x + 5", r"2a + 3b"), (r"\frac{x+1}{x-1}", r"\frac{2k}{k^2+1}"),
    (r"\sin x", r"\cos^2 x + \tan(2x)"), (r"\log_2 5", r"\ln 3 + e^{2}"), (r"|x - 1|", r"\sqrt{x^2+y^2}"),
    (r"(3, \frac{\pi}{2})", r"(-1, 2, 3)"), (r"(2, 5]", r"[-3, \infty)"),
    (r"(-\infty, 1) \cup (2, 5)", r"[0, 1]"),
    (r"\{1 \pm \sqrt{5}, -2\}", r"1, -2, 3"), (r"2 \pm \sqrt{3}", r"\frac{1}{2}, -\frac{3}{4}"),
    (r"6 - 5i", r"\frac{1}{2} + \frac{\sqrt{3}}{2}i"), (r"y = 2x + 3", r"3x - 4y + 5z = 12"),
    (r"x \le 3", r"-2 < x < 4"),
    (r"\begin{pmatrix} 1 \\ 2 \\ 3 \end{pmatrix}",
     r"\begin{pmatrix} -1 & 0 \\ 0 & \frac{1}{2} \end{pmatrix}"),
    (r"\begin{bmatrix} 2 \\ -1 \end{bmatrix}",
     r"\begin{pmatrix} \frac{1}{3} \\ -\frac{2}{3} \end{pmatrix}"),
    (r"\sqrt{2} + \sqrt{3}", r"4\sqrt{2} - 1"), (r"\frac{3\sqrt{2}}{4}", r"\frac{\sqrt{6}}{3}"),
    (r"2^{10}", r"10^{-3}"), (r"5!", r"\binom{6}{2}"), (r"\frac{1}{\sqrt{5}}", r"\frac{5 + \sqrt{5}}{10}"),
]
for _gold, _pred in _SHAPES:
    answers_equal(_pred, _gold)
