"""Pure builders for Matrix event content: text (optionally from Markdown), replies, threads, edits, reactions.

No I/O here: every function returns the ``content`` dict to send, so the shapes are unit-tested directly against the
spec (rich replies without fallbacks per Matrix 1.13, ``m.thread`` relations with the reply fallback for clients
without threads, ``m.replace`` edits with ``m.new_content``, ``m.annotation`` reactions, ``m.mentions``).
"""

from __future__ import annotations

from typing import Any

from bot.content.markdown import render_markdown

__all__ = ["edit_content", "reaction_content", "relates_to", "text_content"]


def text_content(
    text: str,
    *,
    html: str | None = None,
    notice: bool = False,
    reply_to: str | None = None,
    thread_root: str | None = None,
    mentions: list[str] | None = None,
    markdown: bool = False,
) -> dict[str, Any]:
    """Content of an ``m.text``/``m.notice`` message, as a reply and/or in a thread if asked.

    With ``markdown=True`` the body is the Markdown source and ``formatted_body`` its rendering (see
    :func:`bot.content.markdown.render_markdown`); an explicit ``html`` wins over the rendering.
    """
    if html is None and markdown:
        html = render_markdown(text)
    content: dict[str, Any] = {"msgtype": "m.notice" if notice else "m.text", "body": text}
    if html is not None:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html
    relates = relates_to(reply_to=reply_to, thread_root=thread_root)
    if relates is not None:
        content["m.relates_to"] = relates
    content["m.mentions"] = {"user_ids": sorted(set(mentions))} if mentions else {}
    return content


def relates_to(*, reply_to: str | None = None, thread_root: str | None = None) -> dict[str, Any] | None:
    """The ``m.relates_to`` of a message replying to ``reply_to`` and/or in the thread ``thread_root`` (or None)."""
    if thread_root is not None:
        relates: dict[str, Any] = {"rel_type": "m.thread", "event_id": thread_root}
        if reply_to is not None and reply_to != thread_root:
            relates["is_falling_back"] = False
            relates["m.in_reply_to"] = {"event_id": reply_to}
        else:
            # Clients without threads show the message as a reply to the thread's latest event.
            relates["is_falling_back"] = True
            relates["m.in_reply_to"] = {"event_id": reply_to or thread_root}
        return relates
    if reply_to is not None:
        return {"m.in_reply_to": {"event_id": reply_to}}
    return None


def edit_content(
    event_id: str, text: str, *, html: str | None = None, notice: bool = False, markdown: bool = False
) -> dict[str, Any]:
    """Content of an edit (``m.replace``) of ``event_id`` to ``text`` (rendered as Markdown if asked)."""
    new = text_content(text, html=html, notice=notice, markdown=markdown)
    new.pop("m.mentions", None)
    content = dict(new)
    content["body"] = f"* {text}"
    if "formatted_body" in new:
        content["formatted_body"] = f"* {new['formatted_body']}"
    content["m.new_content"] = new
    content["m.relates_to"] = {"rel_type": "m.replace", "event_id": event_id}
    return content


def reaction_content(event_id: str, key: str) -> dict[str, Any]:
    """Content of an ``m.reaction`` annotating ``event_id`` with ``key``."""
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
