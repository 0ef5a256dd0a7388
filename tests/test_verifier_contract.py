"""Contract of the verifier registry: names, signature, never raising, format composition."""

import random

import pytest

from rlvr import config
from rlvr.verifiers import FORMATS, VERIFIERS, compute_reward
from rlvr.verifiers.latex import last_boxed, normalize

ODD_INPUTS = ["", " ", "\x00", "\\", "{", "}", "\\boxed", "\\boxed{", "\\boxed{}", "####", "#### ", "-",
              "1e999999", "-0", "٣", "\ud800", "\\boxed{\\frac{1}{0}}", "\\boxed{0/0}",
              "\\boxed{\\infty-\\infty}",
              "\\boxed{\\sqrt{-1}}", "\\boxed{x^{y^{z}}}", "\\boxed{\\text{}}", "\\boxed{,}", "\\boxed{()}",
              "\\boxed{(,)}", "\\boxed{[1,}", "\\boxed{=}", "\\boxed{x==}",
              "\\boxed{\\begin{pmatrix}\\end{pmatrix}}",
              "\\boxed{1,2,3,4,5,6,7,8,9,10,11,12}", "#### 1/0", "\\boxed{\\frac{a}{}}", "\\fbox{2}", "$$$$"]


def test_registry_names_match_config():
    assert tuple(VERIFIERS) == config.VERIFIERS
    assert set(FORMATS) == set(VERIFIERS)


def test_unknown_verifier_lists_valid_names():
    with pytest.raises(ValueError, match="arithmetic, gsm8k, math"):
        VERIFIERS.get("mathh")
    with pytest.raises(ValueError, match="valid choices"):
        compute_reward("nope", "1", "1")


@pytest.mark.parametrize("name", list(VERIFIERS))
def test_never_raises_and_returns_zero_or_one(name):
    verify = VERIFIERS.get(name)
    for response in ODD_INPUTS + [None, 7, b"\\boxed{1}"]:
        for gold in ("0", "1", "", "x", "\\frac{1}{2}"):
            assert verify(response, gold) in (0.0, 1.0)
    assert verify("1", None) == 0.0


@pytest.mark.parametrize(
    "response,gold,expected",
    [("19", "19", 1.0), (" 19\n", "19", 1.0), ("-3", "-3", 1.0), ("19 and more text", "19", 1.0),
     ("019", "19", 1.0), ("20", "19", 0.0), ("The answer is 19", "19", 0.0), ("1 9", "19", 0.0),
     ("-19", "19", 0.0), ("", "19", 0.0), ("9" * 5000, "9", 0.0)],
)
def test_arithmetic_first_integer(response, gold, expected):
    assert VERIFIERS.get("arithmetic")(response, gold) == expected


@pytest.mark.parametrize(
    "response,mode,expected",
    [("work... #### 42", "hash", 1.0), ("work... 42", "hash", 0.0), (r"so \boxed{42}", "boxed", 1.0),
     ("#### 42", "boxed", 0.0), ("first 7, finally 42 apples", "last_number", 1.0),
     ("42 then 7", "last_number", 0.0), ("#### 42 then 7", "auto", 1.0), (r"\boxed{42} then 7", "auto", 1.0),
     ("then 42", "auto", 1.0), (r"\boxed{\$42.00}", "auto", 1.0), (r"\boxed{42 \text{ apples}}", "auto", 1.0),
     ("it is -42", "auto", 0.0), ("#### 4,2", "auto", 0.0), (r"\boxed{\frac{84}{2}}", "auto", 1.0)],
)
def test_gsm8k_extraction_modes(response, mode, expected):
    assert compute_reward("gsm8k", response, "42", gsm8k_extract=mode) == expected


def test_format_reward_is_added():
    assert compute_reward("math", r"\boxed{2}", "2", format_weight=0.2) == pytest.approx(1.2)
    assert compute_reward("math", r"\boxed{3}", "2", format_weight=0.2) == pytest.approx(0.2)
    assert compute_reward("math", "2", "2", format_weight=0.2) == 0.0  # no box: neither
    assert compute_reward("gsm8k", "it is 42", "42", format_weight=0.5) == 1.0  # right, not "#### N"
    assert compute_reward("gsm8k", "#### 41", "42", format_weight=0.5) == 0.5
    assert compute_reward("gsm8k", r"\boxed{41}", "42", format_weight=0.5, gsm8k_extract="hash") == 0.0
    assert compute_reward("arithmetic", "7", "8", format_weight=0.1) == pytest.approx(0.1)
    assert compute_reward("arithmetic", "x", "8", format_weight=0.1) == 0.0


def test_last_boxed_extraction():
    assert last_boxed(r"\boxed{1} and \boxed{\frac{a}{b^{2}}}") == r"\frac{a}{b^{2}}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed 5$") == "5"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"\boxed{1} \boxed{2") is None  # the last box is truncated: no answer
    assert last_boxed("no box") is None


def test_normalize_removes_only_presentation():
    cases = {r"\left( 3, \dfrac{\pi}{2} \right)": r"(3,\frac{\pi}{2})", r"10,\!080": "10080",
             r"90^\circ": "90", r"x = \$5.": "5", r"\text{(C)}": "C", r"5.4 \text{ cents}": "5.4",
             r"\frac 59": r"\frac{5}{9}", ".35625": "0.35625", "4210_{5}": "4210_5",
             r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}": r"\begin{pmatrix}1\\2\end{pmatrix}"}
    for raw, key in cases.items():
        assert normalize(raw).key == key, raw
    assert normalize("") is None and normalize("1" * 2000) is None


def test_gsm8k_last_number_from_the_tail_equals_the_full_scan():
    # reference: every match listed, keep the last; random texts dense in number characters (signs,
    # thousands groups, decimals, "$") and in the characters the look-behinds test
    from rlvr.verifiers.gsm8k import _NUMBER, last_number_token

    rng = random.Random(0)
    alphabet = "0123456789" * 3 + ",,..$$--  ab)x"
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        found = _NUMBER.findall(text)
        assert last_number_token(text) == (found[-1] if found else None), text
    huge = "\\boxed{" + "1+" * 500_000 + "1} and -12,345.5 left"
    assert last_number_token(huge) == "-12,345.5" and last_number_token("no digits " * 1000) is None
