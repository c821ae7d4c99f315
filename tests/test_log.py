"""Logging: JSON lines when asked, and registered secrets masked in every record."""

import io
import json
import logging

from bot.log import add_secret, setup_logging


def test_json_format_and_secret_masking():
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    add_secret("syt_supersecret_token_value")
    logging.getLogger("ratchet.test").info("request with %s", "syt_supersecret_token_value")
    logging.getLogger("ratchet.test").debug("not shown at INFO")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "INFO" and record["logger"] == "ratchet.test"
    assert "syt_supersecret_token_value" not in lines[0]
    assert "[redacted]" in record["message"]


def test_text_format_is_human_readable():
    stream = io.StringIO()
    setup_logging("WARNING", "text", stream=stream)
    logging.getLogger("ratchet.test").warning("something happened")
    assert "WARNING" in stream.getvalue() and "ratchet.test: something happened" in stream.getvalue()
