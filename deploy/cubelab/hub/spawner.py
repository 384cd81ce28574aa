"""The embedded stack's spawner: local processes, each user as their own Unix account when the hub runs as root.

Team sessions (form, environment) come from cubelab.hub.teams and work with any spawner; this class only adds
what is particular to local processes: whose account a server runs as, and where its home is.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from traitlets import Bool, Unicode


class CubelabSpawner(LocalProcessSpawner):
    run_as_system_users = Bool(True, help="run each user as the Unix account <prefix><name>").tag(config=True)
    system_user_prefix = Unicode(help="a user NAME runs as the account PREFIX+NAME (accounts.USER_PREFIX)").tag(
        config=True
    )
    homes_dir = Unicode(help="where homes are when users are not separate Unix accounts").tag(config=True)
    stack_marker = Unicode(help="CUBELAB_STACK value, so `cubelab down` finds every server").tag(config=True)

    @property
    def system_user(self) -> str:
        return f"{self.system_user_prefix}{self.user.name}"

    def home(self) -> str:
        if self.run_as_system_users:
            return pwd.getpwnam(self.system_user).pw_dir
        path = os.path.join(self.homes_dir, self.user.name)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        if self.run_as_system_users:
            return set_user_setuid(self.system_user)
        home = self.home()
        return lambda: os.chdir(home)

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        env["HOME"] = self.home()
        env["USER"] = self.system_user if self.run_as_system_users else self.user.name
        env["SHELL"] = "/bin/bash"
        return env

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env["CUBELAB_STACK"] = self.stack_marker
        logdir = env.get("TENSORBOARD_LOGDIR", "tensorboard")
        if not os.path.isabs(logdir) and "://" not in logdir:
            env["TENSORBOARD_LOGDIR"] = os.path.join(env["HOME"], logdir)
        return env
