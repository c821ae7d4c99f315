"""Bot administration for the admins in the config: ``!plugins`` (list, reload, enable, disable) and ``!status``."""

import time
from typing import Literal

from bot import Context, MatrixError, Plugin, UserId, __version__, command


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours or days else []
    return " ".join([*parts, f"{minutes}m", f"{secs}s"])


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


class Admin(Plugin):
    """Manage plugins and see how the bot is doing, without restarting it."""

    @command(
        "plugins",
        help="List plugins, or reload/enable/disable one",
        admin=True,
    )
    async def plugins(
        self, ctx: Context, action: Literal["list", "reload", "enable", "disable"] = "list", name: str | None = None
    ) -> None:
        manager = self.bot.plugins
        if action == "list":
            lines = []
            for info in manager.info():
                line = f"- **{info.name}**: {info.state}"
                if info.commands:
                    line += " (" + ", ".join(f"`{manager.prefix}{c}`" for c in info.commands) + ")"
                if info.error:
                    line += f": {info.error}"
                lines.append(line)
            await ctx.reply("\n".join(lines) or "No plugins configured.", notice=True, markdown=True)
            return
        if name is None:
            await ctx.reply(f"Usage: {manager.prefix}plugins {action} NAME", notice=True)
            return
        try:
            await getattr(manager, action)(name)
        except (MatrixError, Exception) as exc:  # PluginLoadError carries the reason for the operator
            self.log.warning("%s %s failed: %s", action, name, exc)
            await ctx.reply(f"⚠️ {action} {name} failed: {exc}", notice=True)
            return
        done = {"reload": "reloaded", "enable": "enabled", "disable": "disabled"}[action]
        await ctx.reply(f"✅ {name} {done}.", notice=True)

    @command("fingerprint", help="The bot's fingerprints, and with a user the safety number, to compare out of band")
    async def fingerprint(self, ctx: Context, who: UserId | None = None) -> None:
        try:
            lines = await self.bot.fingerprints(who)
        except MatrixError as exc:
            await ctx.reply(f"⚠️ {exc}", notice=True)
            return
        text = "\n".join(f"`{line}`" if ":" in line and "," not in line else line for line in lines)
        if who is not None:
            text += (
                f"\n\nIf {who} reads the same safety number in their client (or over the phone), each of you holds "
                "the other's current master key."
            )
        await ctx.reply(text, notice=True, markdown=True, mentions=[who] if who else ())

    @command("status", help="Rooms, device, uptime, decryption health", admin=True)
    async def status(self, ctx: Context) -> None:
        stats = self.bot.stats
        running = [i.name for i in self.bot.plugins.info() if i.state == "running"]
        lines = [
            f"**Ratchet {__version__}** as {self.bot.user_id}, device `{self.bot.device_id}`",
            f"- uptime: {_duration(stats.uptime)} (since {_utc(stats.started_at)})",
            f"- rooms: {stats.rooms}",
            f"- plugins: {', '.join(running) or 'none'}",
            f"- events handled: {stats.events_routed}",
            f"- undecryptable: {stats.utd_waiting} waiting for keys, {stats.utd_recovered} recovered, "
            f"{stats.utd_total} seen",
        ]
        identity = self.bot.identity.status() if self.bot.identity is not None else None
        if identity is not None:
            signed = "cross-signed" if identity.get("cross_signed") else "NOT cross-signed"
            lines.append(f"- device: {signed} ({identity.get('state')})")
            if identity.get("key_backup"):
                lines.append(
                    f"- key backup: version {identity.get('backup_version')}, "
                    f"{identity.get('keys_backed_up')} keys backed up"
                )
        if self.bot.trust is not None:
            changes = self.bot.trust.identity_changes()
            lines.append(f"- trust policy: {self.bot.trust.mode}, {len(changes)} unaccepted identity change(s)")
        await ctx.reply("\n".join(lines), notice=True, markdown=True)

    @command("identity", help="Accept a user's new cross-signing identity after a change: !identity accept USER",
             admin=True)
    async def identity(self, ctx: Context, action: Literal["accept", "list"], user: UserId | None = None) -> None:
        trust = self.bot.trust
        if trust is None:
            await ctx.reply("No trust policy is active.", notice=True)
            return
        if action == "list" or user is None:
            changes = trust.identity_changes()
            text = "\n".join(f"- {c.user_id}" for c in changes) or "No unaccepted identity changes."
            await ctx.reply(text, notice=True, markdown=True)
            return
        trust.pin(user)
        await ctx.reply(f"✅ {user}'s current identity is now trusted.", notice=True)
