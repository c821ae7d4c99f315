"""Logging: JSON lines when asked, and registered secrets masked in every record."""

import io
import json
import logging

import pytest

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


def _boom(secret: str) -> None:
    raise RuntimeError(f"login refused for token {secret}")


def test_tracebacks_and_stacks_are_masked_too():
    secret = "syt_traceback_secret_0123"
    add_secret(secret)
    for fmt in ("text", "json"):
        stream = io.StringIO()
        setup_logging("INFO", fmt, stream=stream)
        log = logging.getLogger("ratchet.test")
        try:
            _boom(secret)
        except RuntimeError:
            log.exception("the request failed")
        log.warning("where am I", stack_info=True, extra={})
        log.error("with an explicit exc_info", exc_info=RuntimeError(f"again {secret}"))
        out = stream.getvalue()
        assert secret not in out, out
        assert out.count("[redacted]") >= 2, out
        assert "Traceback" in out and "_boom" in out  # the traceback itself is kept
        assert "Stack (most recent call last)" in out or '"stack"' in out


def test_plugins_register_secrets_through_the_public_api():
    import bot

    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream)
    bot.mask_secret("irc-network-password-42")
    logging.getLogger("ratchet.plugin.irc_bridge").info("PASS irc-network-password-42")
    assert "irc-network-password-42" not in stream.getvalue() and "PASS [redacted]" in stream.getvalue()


MALFORMED_FILE = {
    "type": "m.room.message",
    "event_id": "$malformed",
    "sender": "@mallory:example.org",
    "origin_server_ts": 1,
    "room_id": "!room:example.org",
    "content": {"msgtype": "m.file", "body": "the secret body text 7d1f"},  # no "file", no "url"
}


def test_nio_validation_warnings_lose_the_event_content(caplog):
    """nio logs a malformed event whole (a 45-line WARNING with the decrypted body); the filter bot.log installs on
    nio's loggers leaves one line without the content, for every handler (caplog's too), not only Ratchet's."""
    import copy

    from nio import Event

    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream)
    with caplog.at_level(logging.INFO):
        parsed = Event.parse_decrypted_event(copy.deepcopy(MALFORMED_FILE))
    assert type(parsed).__name__ == "BadEvent"
    records = [r for r in caplog.records if r.name.startswith("nio")]
    assert [r.getMessage() for r in records] == [
        "Error validating event: failed 'required' in schema['properties']['content']"
        " (event content withheld from the log)"
    ]
    assert "secret body" not in caplog.text and "secret body" not in stream.getvalue()
    assert "Error validating event" in stream.getvalue()


def test_nio_debug_records_and_other_records_are_left_alone(caplog):
    with caplog.at_level(logging.DEBUG, "nio"):
        logging.getLogger("nio.events.misc").debug("Error validating event: %s", "details at DEBUG")
        logging.getLogger("nio.crypto.log").warning("Received unsupported Olm event of type %s", "m.x")
        logging.getLogger("nio.crypto.log").error("Error validating decrypted Olm event from @a:b: {'k': 'v'} bad")
    assert [r.getMessage() for r in caplog.records] == [
        "Error validating event: details at DEBUG",
        "Received unsupported Olm event of type m.x",
        "Error validating decrypted Olm event from @a:b (event content withheld from the log)",
    ]


@pytest.mark.e2e
async def test_a_malformed_file_from_a_member_leaves_no_body_in_the_log(ratchet, caplog):
    """A member sends an encrypted m.file without its file; the bot decrypts it and nio, validating it, would log
    the whole decrypted event (the body with it) as a WARNING. Captured at INFO, the log has the warning on one line
    and never the body."""
    caplog.set_level(logging.INFO)
    room = await ratchet.room(plugins={"ping": {}})
    secret = "confidential-body-text-5c2e"
    await room.send("", content={"msgtype": "m.file", "body": secret, "info": {"size": 10}})
    # The bot handles a room's events in order: once the later !ping is answered, the malformed one was decrypted.
    assert (await room.ask("!ping")).body.startswith("pong")
    assert "Error validating event" in caplog.text  # reproduced: nio did complain
    assert secret not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "On instance" in r.getMessage()]
