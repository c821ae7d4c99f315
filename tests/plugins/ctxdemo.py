"""Test plugin: one command per Context action (Markdown, threads, reactions, edits, redactions, DMs, media).

Options: ``file`` and ``image``, paths of the files ``!file`` and ``!image`` send.
"""

import hashlib

from bot import Context, Plugin, command

MARKDOWN = "**bold** and `code`\n\n- one\n- two\n\n<script>alert(1)</script> [link](https://matrix.org)"


class CtxDemo(Plugin):
    @command("md")
    async def md(self, ctx: Context) -> None:
        await ctx.reply(MARKDOWN, markdown=True)

    @command("thread")
    async def thread(self, ctx: Context) -> None:
        await ctx.reply_in_thread("in a thread")

    @command("react")
    async def react(self, ctx: Context) -> None:
        await ctx.react("✅")

    @command("edit")
    async def edit(self, ctx: Context) -> None:
        draft = await ctx.send("draft")
        await ctx.edit(draft, "final *text*", markdown=True)

    @command("redact")
    async def redact(self, ctx: Context) -> None:
        await ctx.redact(reason="ctxdemo")

    @command("dmme")
    async def dmme(self, ctx: Context) -> None:
        await ctx.reply_privately("hello in private")

    @command("file")
    async def file(self, ctx: Context) -> None:
        await ctx.send_file(self.config["file"], reply=True)

    @command("image")
    async def image(self, ctx: Context) -> None:
        await ctx.send_image(self.config["image"], reply=True)

    @command("echo-file")
    async def echo_file(self, ctx: Context) -> None:
        """Sent as a reply to a file: answers with that file's size and SHA-256."""
        data = await ctx.download()
        await ctx.reply(f"size={len(data)} sha256={hashlib.sha256(data).hexdigest()}")
