"""An etcd with authentication on and provisioned tenants, for tests of tenant isolation.

:func:`start_auth_etcd` starts a private member, creates ``root`` (user and role), turns
authentication on, and provisions each tenant with :class:`foundation_etcd.Tenants` as
root: its role ``foundation/{namespace}/{tenant}`` and a user of the same name with the
given password. :class:`AuthEtcd` then gives the configurations to work as root or as a
tenant's user.

Annotations here are evaluated (no ``from __future__ import annotations``), as in
``_tls``: the class is shown as ``foundation_etcd.testing.AuthEtcd``.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ._server import EtcdServer

__all__ = ["AuthEtcd", "start_auth_etcd"]


@dataclass(frozen=True)
class AuthEtcd:
    """A started etcd with auth on, ``root`` and provisioned tenants.

    Attributes:
        server: the member (close it with ``server.close()``, or let the fixture).
        namespace: the tenants' namespace.
        root_password: the ``root`` user's password.
        passwords: each provisioned tenant's user password, by tenant.
    """

    server: EtcdServer
    namespace: str
    root_password: str
    passwords: Mapping[str, str] = field(default_factory=dict)

    def root_config(self, tenant: str | None = None, **options: Any) -> Any:
        """A ``Config`` for ``root``, on ``tenant``'s keys (the first tenant by default)."""
        from foundation_etcd import Config

        return Config(
            endpoints=(self.server.endpoint,),
            namespace=self.namespace,
            tenant=tenant or next(iter(self.passwords), "default"),
            user="root",
            password=self.root_password,
            **options,
        )

    def user(self, tenant: str) -> str:
        """The user name of ``tenant`` (its role's name)."""
        return f"foundation/{self.namespace}/{tenant}"

    def tenant_config(self, tenant: str, *, keys_of: str | None = None, **options: Any) -> Any:
        """A ``Config`` for ``tenant``'s own user.

        Args:
            tenant: the provisioned tenant whose user connects.
            keys_of: work on this tenant's keys instead (to see etcd refuse them).
            options: more ``Config`` settings.

        Raises:
            KeyError: ``tenant`` was not provisioned here.
        """
        from foundation_etcd import Config

        return Config(
            endpoints=(self.server.endpoint,),
            namespace=self.namespace,
            tenant=keys_of or tenant,
            user=self.user(tenant),
            password=self.passwords[tenant],
            **options,
        )


async def _bootstrap(auth: AuthEtcd) -> None:
    from foundation_etcd import Config, Tenants
    from foundation_etcd._transport._auth import AuthAdmin
    from foundation_etcd.lowlevel import open_transport

    plain = Config(endpoints=(auth.server.endpoint,), namespace=auth.namespace)
    async with open_transport(plain) as t:
        admin = AuthAdmin(t)
        await admin.user_add("root", auth.root_password)
        await admin.role_add("root")
        await admin.user_grant_role("root", "root")
        await admin.enable()
    async with open_transport(auth.root_config()) as t:
        for tenant, password in auth.passwords.items():
            await Tenants(t).create(tenant, password=password)


def start_auth_etcd(
    name: str = "auth",
    *,
    namespace: str = "tenants",
    tenants: Mapping[str, str] | None = None,
    root_password: str = "root-secret",
    extra_args: Sequence[str] = (),
) -> AuthEtcd:
    """Start a private etcd with auth on and ``tenants`` (tenant -> password) provisioned.

    Call it outside an event loop (it runs its own), or in a worker thread.

    Args:
        name: the member's name.
        namespace: the tenants' namespace.
        tenants: tenant to password; ``{"a": "a-secret", "b": "b-secret"}`` by default.
        root_password: the password of ``root``.
        extra_args: more etcd flags (``--auth-token``...).
    """
    server = EtcdServer(name, extra_args=tuple(extra_args))
    server.start()
    auth = AuthEtcd(
        server,
        namespace,
        root_password,
        dict(tenants if tenants is not None else {"a": "a-secret", "b": "b-secret"}),
    )
    try:
        anyio.run(_bootstrap, auth)
    except BaseException:
        server.close()
        raise
    return auth
