"""verdict.c: the one table of what a reply means after a command."""
from __future__ import annotations

import pytest

from mailexpress import _testhooks

verdict = _testhooks._verdict
COMMANDS = ("greeting", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "end_of_data",
            "bdat", "rset", "noop", "quit")


@pytest.mark.parametrize("after", COMMANDS)
def test_421_closes_whatever_it_answers(after):
    assert verdict(after, 421)[0] == "closing"


@pytest.mark.parametrize("after", COMMANDS)
def test_a_3xx_belongs_only_to_auth_334_and_data_354(after):
    for code in (300, 334, 354, 399):
        expected = "continue" if (after, code) in {("auth", 334), ("data", 354)} else "out_of_step"
        assert verdict(after, code)[0] == expected, (after, code)
    if verdict(after, 354)[0] == "out_of_step":
        assert verdict(after, 354)[1].startswith("a 354 reply cannot answer ")


@pytest.mark.parametrize("after", COMMANDS)
def test_4xx_and_5xx_are_refusals_and_2xx_acceptance_except_after_data(after):
    for code in (400, 450, 451, 500, 550, 554):
        assert verdict(after, code)[0] == "refused"
    expected = "out_of_step" if after == "data" else "accepted"
    assert verdict(after, 250)[0] == expected
    if after == "data":
        assert "did not answer DATA with 354" in verdict(after, 250)[1]
