"""domain/close_codes.py: one table of close codes, and docs/protocol.md says the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dramaverse.domain.close_codes import TABLE, CloseCode, Reconnect, reconnect_for

PROTOCOL_DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def documented() -> dict[int, str]:
    """code -> the reconnect column's first words, from the doc's close-code table."""
    text = PROTOCOL_DOC.read_text("utf-8")
    section = text.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d{4}) \| .* \| ([^|]+) \|$", section, flags=re.M)
    return {int(code): answer.strip() for code, answer in rows}


def test_the_doc_lists_every_code_the_server_sends_with_its_reconnect_rule() -> None:
    doc = documented()
    sent = {code for code in TABLE if code is not CloseCode.ABNORMAL}
    assert set(doc) == {int(code) for code in sent}
    for code, meaning in TABLE.items():
        assert doc[int(code)].startswith(meaning.reconnect.value), (code, doc[int(code)])


@pytest.mark.parametrize(
    ("code", "answer"),
    [(1001, Reconnect.YES), (4002, Reconnect.YES), (4050, Reconnect.YES), (4101, Reconnect.NO),
     (4199, Reconnect.NO), (1000, Reconnect.CLIENT), (3000, Reconnect.CLIENT)],
)  # fmt: skip
def test_reconnect_rule_by_code_and_by_range(code: int, answer: Reconnect) -> None:
    assert reconnect_for(code) is answer
