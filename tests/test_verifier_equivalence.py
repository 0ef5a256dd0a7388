"""Table-driven equivalence of MATH answer styles: (gold, prediction, expected reward).

Every pair goes through the public verifier (``\\boxed{pred}`` against the gold), so the whole
ladder -- extraction, normalisation, string, numeric, symbolic -- is exercised.
"""

import pytest

from rlvr.verifiers import VERIFIERS

T, F = 1.0, 0.0

PAIRS = [
    # fractions vs decimals
    (r"\frac{1}{2}", "0.5", T),
    (r"\frac{1}{2}", ".5", T),
    (r"\frac12", r"\frac{1}{2}", T),
    (r"\dfrac{3}{4}", "0.75", T),
    (r"\frac{1}{3}", "0.333333", T),  # a 6-digit rounding is within rtol 1e-6
    (r"\frac{1}{3}", "0.33", F),
    (r"\frac{2}{3}", "0.6667", F),
    (r"\frac{14}{3}", r"4\frac{2}{3}", T),  # mixed number
    (r"\frac{7}{2}", "3.5", T),
    (r"\frac{7}{2}", "7/2", T),
    (r"-\frac{3}{8}", r"\frac{-3}{8}", T),
    (r"-\frac{3}{8}", r"\frac{3}{8}", F),
    (r"\frac{9}{19}", r"\frac{18}{38}", T),
    (r"\tfrac{5}{9}", r"\frac 59", T),
    ("1.25", r"\frac{5}{4}", T),
    ("0.15", r"\frac{3}{20}", T),
    ("2", "2.0", T),
    ("2", "2.01", F),
    ("1000000", "1000001", F),  # integers are exact, no tolerance
    # square roots
    (r"3\sqrt{13}", r"\sqrt{117}", T),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", T),
    (r"2\sqrt{5}", r"\sqrt{20}", T),
    (r"2\sqrt{5}", r"\sqrt{10}", F),
    (r"\sqrt{51}", "7.1414284", T),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", T),
    (r"11\sqrt2", r"11\sqrt{2}", T),
    (r"\sqrt[3]{8}", "2", T),
    (r"\frac{3\sqrt{3}}{4}", r"\frac{3}{4}\sqrt{3}", T),
    (r"\sqrt{66}", "66", F),
    ("2", r"\sqrt{4}", T),
    ("4", r"2\sqrt{2}\cdot\sqrt{2}", T),
    (r"\frac{\sqrt{3}}{3}", "0.577350", T),
    (r"\frac{\sqrt{3}}{3}", "0.58", F),
    ("6", r"\gcd(12, 18)", T),
    # pi
    (r"\pi", "3.14", F),
    (r"288 \pi", r"288\pi", T),
    (r"\frac{\pi}{2}", r"0.5\pi", T),
    (r"12\pi", "37.699111843", T),
    (r"18+2\pi", r"2\pi+18", T),
    (r"\frac{20000}{\pi}", r"\frac{20000}{3.14}", F),
    (r"7\pi", "7", F),
    # intervals
    ("(3,4]", "(3, 4]", T),
    ("(3,4]", "(3,4)", F),
    ("(3,4]", "[3,4]", F),
    (r"(-\infty, 0]", r"(-\infty,0]", T),
    (r"(-\infty, 0]", r"(-\infty,0)", F),
    (r"(2,\infty)", r"(2, \infty)", T),
    (r"(2,\infty)", r"[2,\infty)", F),
    (r"(0,9) \cup (9,36)", r"(9,36) \cup (0,9)", T),
    (r"(-\infty, 2) \cup (3, \infty)", r"(-\infty, 3) \cup (2, \infty)", F),
    (r"\left[ \frac{\pi^2}{8}, \frac{5 \pi^2}{4} \right]", r"[\frac{\pi^2}{8}, 1.25\pi^2]", T),
    (r"x \in [-2,7]", "[-2,7]", T),
    ("[-2,7]", r"-2 \le x \le 7", T),
    (r"\left(\frac{3}{5},\frac{8}{3}\right]", r"(0.6, \frac{8}{3}]", T),
    # ordered pairs and tuples
    ("(6,31,-1)", "(6, 31, -1)", T),
    ("(6,31,-1)", "(31,6,-1)", F),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})", T),
    (r"\left( 3, \frac{\pi}{2} \right)", "(3, 1.5707963)", T),
    ("(-2,1)", "(1,-2)", F),
    ("(1,-16,-4,43)", "(1, -16, -4, 43)", T),
    (r"\left( \frac{3}{2}, -13 \right)", "(1.5, -13)", T),
    ("(15,-29)", "(15,-29,0)", F),
    # degrees
    (r"90^\circ", "90", T),
    (r"145^\circ", r"145^{\circ}", T),
    (r"30^\circ", "30 degrees", T),
    (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}", T),
    (r"120^\circ", r"60^\circ", F),
    # percentages
    (r"50\%", "50", T),
    (r"50\%", "0.5", T),
    (r"12.5\%", r"\frac{1}{8}", T),
    (r"40\%", "4", F),
    (r"5.4 \text{ cents}", "5.4", T),
    # scientific notation
    (r"1.5\times10^{3}", "1500", T),
    ("1500", r"1.5 \times 10^3", T),
    (r"3.2 \cdot 10^{-4}", "0.00032", T),
    (r"6.02\times10^{23}", "6.02e23", T),
    (r"1.5\times10^{3}", "150", F),
    # x = 3 vs 3, equations
    ("x=5", "5", T),
    ("5", "x = 5", T),
    ("y = 2x + 3", "2x+3", T),
    ("y = 2x + 3", "y = 3 + 2x", T),
    ("y = -2x", "y = 2x", F),
    ("5x - 7y + 11z + 4 = 0", "-5x + 7y - 11z - 4 = 0", T),
    ("5x - 7y + 11z + 4 = 0", "10x - 14y + 22z + 8 = 0", T),
    ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z - 4 = 0", F),
    # unordered sets of solutions
    ("1,-2", "-2, 1", T),
    ("3, 5, 7", "7, 5, 3", T),
    (r"\{1\pm\sqrt{5},-2\}", r"-2, 1+\sqrt{5}, 1-\sqrt{5}", T),
    (r"1 \pm \sqrt{19}", r"1+\sqrt{19}, 1-\sqrt{19}", T),
    (r"3 \pm 2 \sqrt{2}", r"3+2\sqrt{2}", F),
    ("1,-2", "1, 2", F),
    (r"\{1,2\}", r"\{2,1\}", T),
    ("-2,1", "x=1, x=-2", T),
    (r"\{5\}", "5", T),
    (r"(2,\infty)", "x > 2", T),
    (r"(-\infty, 2) \cup (3, \infty)", r"x < 2 \text{ or } x > 3", T),
    (r"\mathbb{R}", r"(-\infty,\infty)", T),
    (r"\emptyset", r"\varnothing", T),
    (r"(2,\infty)", "2", F),
    (r"1 \pm \sqrt{19}", r"1+\sqrt{19}", F),
    # expressions
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "(x-1)(x^4+x^2+1)", T),
    ("(a+5)(b+2)", "ab + 2a + 5b + 10", T),
    ("(a+5)(b+2)", "ab + 2a + 5b + 5", F),
    ("p - q", "-q + p", T),
    (r"\cot x", r"\frac{\cos x}{\sin x}", T),
    (r"\cot x", r"\tan x", F),
    ("6r^2-4r-24", "2(3r^2-2r-12)", T),
    ("2k+2", "2(k+1)", T),
    (r"\frac{11+9a}{20}", r"\frac{9a+11}{20}", T),
    ("x^3+3x-6", "x^3+3x+6", F),
    # complex numbers
    ("6 - 5i", "6-5i", T),
    ("1+2i", "2i+1", T),
    ("1+2i", "1-2i", F),
    # matrices and vectors
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
     r"\begin{pmatrix} -\frac13 \\ \frac23 \\ \frac53 \end{pmatrix}", T),
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
     r"\begin{pmatrix} -\frac13 \\ \frac23 \\ \frac43 \end{pmatrix}", F),
    (r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}", r"\begin{pmatrix} -1 & 0 \\ 0 & 1 \end{pmatrix}", F),
    # thousands separators, currency, units, text, bases
    (r"10,\!080", "10080", T),
    (r"11,\! 111,\! 111,\! 100", "11111111100", T),
    (r"\$32,\!348", "32348", T),
    (r"\$18.90", "18.9", T),
    (r"864 \mbox{ inches}^2", "864", T),
    (r"\text{Evelyn}", "Evelyn", T),
    (r"\text{Evelyn}", "Navin", F),
    (r"\text{east}", "East", T),
    (r"\text{(C)}", "C", T),
    (r"\text{(C)}", "(B)", F),
    ("52_8", "52_{8}", T),
    ("52_8", "42", F),
    ("4210_{5}", "4210_5", T),
]


def test_table_is_large_and_balanced():
    assert len(PAIRS) >= 80
    negatives = sum(expected == F for _, _, expected in PAIRS)
    assert negatives >= 30


@pytest.mark.parametrize("gold,pred,expected", PAIRS,
                         ids=[f"{i}:{g}|{p}" for i, (g, p, _) in enumerate(PAIRS)])
def test_math_equivalence(gold, pred, expected):
    assert VERIFIERS.get("math")(f"The answer is $\\boxed{{{pred}}}$.", gold) == expected
