"""The profile read API answers odd questions with JSON errors naming the field, never a 500."""

from __future__ import annotations

import httpx
import pytest

READER = {"Authorization": "Bearer tk_reader"}


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"type": "e mail", "value": "x@y.com"}, 400, "type"),
        ({"type": "1abc", "value": "x"}, 400, "type"),
        ({"type": "email", "value": "   "}, 400, "value"),
        ({"type": "member_id", "value": " "}, 400, "value"),
        ({"type": "phone", "value": "call me"}, 400, "value"),  # no profile can hold it
        ({"type": "email", "value": "no-domain@"}, 400, "value"),
        ({"type": "Email", "value": " Nobody@Example.com "}, 404, "value"),  # a fine question
        ({"type": "phone", "value": "+86 138-0013-8000"}, 404, "value"),
    ],
)
def test_lookup_errors_name_the_field(
    api: str, params: dict[str, str], status: int, field: str
) -> None:
    got = httpx.get(f"{api}/v1/profiles/lookup", params=params, headers=READER, timeout=10)
    assert got.status_code == status
    body = got.json()
    assert body["field"] == field and body["message"]


def test_explain_of_an_unknown_profile_is_a_json_404(api: str) -> None:
    got = httpx.get(
        f"{api}/v1/identity/explain", params={"profile_id": "987654321"}, headers=READER
    )
    assert got.status_code == 404 and got.json()["field"] == "profile_id"
