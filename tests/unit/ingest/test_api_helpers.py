import base64

from ingest.api import basic_username


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_write_key_is_the_basic_username() -> None:
    assert basic_username(_basic("wk_123:")) == "wk_123"
    assert basic_username(_basic("wk_123:ignored")) == "wk_123"


def test_other_authorization_headers_give_no_key() -> None:
    assert basic_username(None) is None
    assert basic_username("Bearer abc") is None
    assert basic_username("Basic !!!") is None
    assert basic_username(_basic(":only-password")) is None
