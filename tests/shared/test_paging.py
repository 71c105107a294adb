"""The shared opaque page tokens."""

from __future__ import annotations

import pytest

from services.shared.errors import InvalidArgument
from services.shared.paging import DEFAULT_PAGE_SIZE, decode_page_token, encode_page_token, page_size, query_fingerprint


def test_round_trip_and_empty_token():
    fp = query_fingerprint("jobs", ["RUNNING"], "phases/cognate")
    assert decode_page_token(encode_page_token(42, fp), fp, expect=int) == 42
    assert decode_page_token(encode_page_token([7, "abc"], fp), fp, expect=list) == [7, "abc"]
    assert decode_page_token("", fp) is None
    assert page_size(0) == DEFAULT_PAGE_SIZE and page_size(7) == 7


@pytest.mark.parametrize(
    "token",
    ["@@not-base64@@", "bm90IGpzb24", encode_page_token(-1), encode_page_token("x"), encode_page_token(True),
     encode_page_token(3, "other-filters")],
)
def test_bad_tokens_are_invalid_argument_naming_page_token(token):
    with pytest.raises(InvalidArgument) as err:
        decode_page_token(token, "", expect=int)
    assert [f for f, _ in err.value.violations] == ["page_token"]
