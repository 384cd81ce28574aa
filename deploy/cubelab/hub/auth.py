"""Local accounts for the embedded hub: scrypt hashes in a private file, and a page to change one's password."""

from __future__ import annotations

from typing import Any

from jupyterhub.auth import Authenticator
from jupyterhub.handlers import BaseHandler
from tornado import web
from traitlets import Unicode

from cubelab.passwords import MIN_LENGTH, PasswordFile


class LocalPasswordAuthenticator(Authenticator):
    passwords_file = Unicode(help="JSON file of user -> scrypt hash, written by `cubelab up`.").tag(config=True)

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        username, password = data.get("username", ""), data.get("password", "")
        if PasswordFile(self.passwords_file).check(username, password):
            return username
        self.log.warning("failed login for %r", username)  # the name only, never the password
        return None

    def get_handlers(self, app: Any) -> list[tuple[str, type]]:
        return [*super().get_handlers(app), (r"/change-password", ChangePasswordHandler)]


class ChangePasswordHandler(BaseHandler):
    async def _page(self, message: str = "", ok: bool = False) -> None:
        html = await self.render_template("change-password.html", message=message, ok=ok, min_length=MIN_LENGTH)
        self.finish(html)

    @web.authenticated
    async def get(self) -> None:
        await self._page()

    @web.authenticated
    async def post(self) -> None:
        user = self.current_user.name
        current = self.get_body_argument("current_password", "")
        new = self.get_body_argument("new_password", "")
        confirm = self.get_body_argument("confirm_password", "")
        store = PasswordFile(self.authenticator.passwords_file)
        if not store.check(user, current):
            self.set_status(403)
            await self._page("The current password is wrong.")
        elif new != confirm:
            self.set_status(400)
            await self._page("The new passwords differ.")
        elif len(new) < MIN_LENGTH:
            self.set_status(400)
            await self._page(f"Choose at least {MIN_LENGTH} characters.")
        else:
            store.set(user, new)
            self.log.info("password changed for %r", user)
            await self._page("Password changed.", ok=True)
