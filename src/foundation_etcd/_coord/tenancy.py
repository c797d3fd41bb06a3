r"""Tenant provisioning: the etcd role and users that confine a tenant to its keys.

One role per tenant, named ``foundation/{namespace}/{tenant}`` (``/`` is outside the id
alphabet, so the name parses back into exactly one pair), holding exactly the permissions
the library needs to work as that tenant (:meth:`Tenants.permissions`):

* ``readwrite`` on the tenant prefix ``/{namespace}/{tenant}/``;
* ``read`` on its quota prefix ``/{namespace}/_system/quotas/{tenant}/`` (its limits);
* ``readwrite`` on that prefix's ``queue/`` (its reservations);
* ``read`` on ``/{namespace}/_system/signers/{tenant}/`` (the keys it trusts to sign
  signals; only an administrator adds them, :meth:`Tenants.trust`);
* ``read`` on the one key ``"\0"``, which nothing writes: ``Transport.revision`` reads the
  store revision by counting it.

Leases need no permission in etcd; ``Maintenance.Status`` neither. Everything else is
refused to the tenant's users, by etcd: other tenants' keys, the tenant's own limits
(writing them), the auth store.

Guarantees:
    * Ids and user names are checked before anything is sent (:class:`InvalidIdError`,
      :class:`ConfigurationError`).
    * Idempotent: :meth:`Tenants.create` and :meth:`Tenants.grant` converge on the role,
      its permissions and the grant, and change nothing that is already as it should be
      (each change to etcd's auth store bumps its revision, which invalidates JWT tokens);
      an existing user's password is never changed.
    * :meth:`Tenants.delete` removes the role, then the users it leaves without any role
      (never ``root``), and the tenant's keys only when asked (``delete_keys=True``), in
      one transaction.
    * A refusal for want of admin rights is an :class:`AuthError` that says so.
    * Every change (a role or user created, a grant, a revoke, a delete) is appended to
      the tenant's audit log (``tenant-create``, ``-grant``, ``-revoke``, ``-delete``;
      best effort, never a password); a call that changed nothing appends nothing. A
      tenant deleted with its keys takes its log with it.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from types import TracebackType

from .._core.errors import AuthError, ConfigurationError, InvalidIdError
from .._core.keys import Keyspace, prefix_end, validate_id
from .._core.kv import DeleteResult, Op
from .._transport import Transport
from .._transport._auth import AuthAdmin, KeyPermission, PermissionKind
from .audit import AuditLog
from .signers import TrustMethods

__all__ = [
    "ROLE_PREFIX",
    "KeyPermission",
    "TenantDeletion",
    "TenantInfo",
    "Tenants",
    "parse_tenant_role",
    "tenant_role",
]

ROLE_PREFIX = "foundation/"
REVISION_KEY = b"\0"  # the key Transport.revision() counts
_MAX_USER = 256
_ADMIN_HINT = (
    "managing tenants needs etcd's root role: connect as root, or as a user granted the "
    "root role (FOUNDATION_ETCD_USER and FOUNDATION_ETCD_PASSWORD)"
)


def tenant_role(namespace: str, tenant: str) -> str:
    """The role of a tenant: ``foundation/{namespace}/{tenant}``.

    Raises:
        InvalidIdError: ``namespace`` or ``tenant`` is not an id.
    """
    return f"{ROLE_PREFIX}{validate_id(namespace, 'namespace')}/{validate_id(tenant, 'tenant')}"


def parse_tenant_role(role: str) -> tuple[str, str] | None:
    """``(namespace, tenant)`` of a tenant role; ``None`` for any other role. Never raises."""
    if not role.startswith(ROLE_PREFIX):
        return None
    namespace, sep, tenant = role[len(ROLE_PREFIX) :].partition("/")
    try:
        return (validate_id(namespace), validate_id(tenant)) if sep else None
    except InvalidIdError:
        return None


def tenant_permissions(keyspace: Keyspace) -> tuple[KeyPermission, ...]:
    """The permissions of the tenant role of ``keyspace`` (see the module's documentation)."""

    def prefix(kind: PermissionKind, p: bytes) -> KeyPermission:
        return KeyPermission(kind, p, prefix_end(p))

    return (
        prefix("readwrite", keyspace.prefix),
        prefix("read", keyspace.quotas_prefix()),
        prefix("readwrite", keyspace.quota_queues_prefix()),
        prefix("read", keyspace.signers_prefix()),
        KeyPermission("read", REVISION_KEY),
    )


def _check_user(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > _MAX_USER:
        raise ConfigurationError("user", f"must be a name of 1-{_MAX_USER} characters: {name!r}")
    if not name.isprintable() or name != name.strip():
        raise ConfigurationError("user", f"must be printable, without surrounding spaces: {name!r}")
    if name == "root":
        raise ConfigurationError("user", "root holds every permission; it is never a tenant's")
    return name


def _check_password(password: str | None, no_password: bool) -> None:
    if password is not None and (not isinstance(password, str) or not password):
        raise ConfigurationError("password", "must be a non-empty string")
    if password is not None and no_password:
        raise ConfigurationError("password", "give a password or no_password=True, not both")


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """A provisioned tenant, as etcd's auth store holds it.

    Attributes:
        namespace: the namespace (an id).
        tenant: the tenant (an id).
        role: its role, ``foundation/{namespace}/{tenant}``.
        users: the users granted the role, sorted.
        permissions: the role's permissions in etcd.
        expected: the permissions the role should hold (:func:`tenant_permissions`).
    """

    namespace: str
    tenant: str
    role: str
    users: tuple[str, ...]
    permissions: tuple[KeyPermission, ...]
    expected: tuple[KeyPermission, ...]

    @property
    def missing(self) -> tuple[KeyPermission, ...]:
        """Expected permissions the role lacks (``create`` grants them again)."""
        return tuple(p for p in self.expected if p not in self.permissions)

    @property
    def extra(self) -> tuple[KeyPermission, ...]:
        """Permissions the role holds beyond the expected ones (granted by hand)."""
        return tuple(p for p in self.permissions if p not in self.expected)


@dataclass(frozen=True, slots=True)
class TenantDeletion:
    """What :meth:`Tenants.delete` removed.

    Attributes:
        role_deleted: whether the role existed (and is now gone).
        users_deleted: the users deleted (those left without any role).
        keys_deleted: how many keys were deleted (0 without ``delete_keys``).
    """

    role_deleted: bool
    users_deleted: tuple[str, ...]
    keys_deleted: int


class Tenants(TrustMethods):
    """Create, list, grant, revoke and delete the tenants of one namespace.

    Also trust the keys that sign a tenant's signals (``trust``, ``untrust``,
    ``signers``: ``signers.py``).

    Every method needs etcd's ``root`` role once authentication is on: ``transport`` is
    logged in as ``root`` or as a user granted the ``root`` role.

    Args:
        transport: an open transport (:func:`~foundation_etcd.lowlevel.open_transport`).
        namespace: the namespace; ``transport.config.namespace`` by default.

    Raises:
        InvalidIdError: ``namespace`` is not an id.
    """

    def __init__(self, transport: Transport, namespace: str | None = None) -> None:
        self.namespace = validate_id(
            transport.config.namespace if namespace is None else namespace, "namespace"
        )
        self._transport = transport
        self._admin = AuthAdmin(transport)

    def keyspace(self, tenant: str) -> Keyspace:
        """The keys of ``tenant`` in this namespace (checks the id)."""
        return Keyspace(self.namespace, tenant)

    def role(self, tenant: str) -> str:
        """The role of ``tenant``: ``foundation/{namespace}/{tenant}``."""
        return tenant_role(self.namespace, tenant)

    def permissions(self, tenant: str) -> tuple[KeyPermission, ...]:
        """The permissions the role of ``tenant`` holds once created."""
        return tenant_permissions(self.keyspace(tenant))

    async def create(
        self,
        tenant: str,
        user: str | None = None,
        *,
        password: str | None = None,
        no_password: bool = False,
    ) -> TenantInfo:
        """Create the tenant's role, grant its permissions, and grant it to ``user``.

        Idempotent: what exists is kept (an existing user keeps its password).

        Args:
            tenant: the tenant (an id).
            user: the user to grant the role to, created when missing; the role's name by
                default. For a client certificate, its common name (CN): etcd started
                with ``--client-cert-auth`` takes a certificate's CN as the user.
            password: the password of a new user.
            no_password: create a new user without a password (it authenticates with a
                client certificate only).

        Returns:
            The tenant as etcd now holds it.

        Raises:
            InvalidIdError: ``tenant`` is not an id (nothing sent).
            ConfigurationError: a bad user name, or a password with ``no_password``; or a
                new user with neither (nothing created).
            AuthError: the transport's user lacks the root role.
        """
        role = self.role(tenant)
        name = _check_user(role if user is None else user)
        _check_password(password, no_password)
        with _AdminRefusal():
            added = await self._admin.role_add(role)
            have = await self._admin.role_get(role) or []
            granted = 0
            for perm in self.permissions(tenant):
                if perm not in have:
                    await self._admin.role_grant(role, perm)
                    granted += 1
            made, gave = await self._grant(role, name, password, no_password)
            info = await self.get(tenant)
        assert info is not None
        if added or granted or made or gave:
            details = {"role": role, "user": name, "permissions_granted": granted}
            await self._note(tenant, "tenant-create", details | {"user_created": made})
        return info

    async def grant(
        self,
        tenant: str,
        user: str,
        *,
        password: str | None = None,
        no_password: bool = False,
    ) -> TenantInfo:
        """Grant the tenant's role to ``user`` (created when missing, as in :meth:`create`).

        Raises:
            InvalidIdError: ``tenant`` is not an id.
            ConfigurationError: as :meth:`create`; or the tenant is not created.
            AuthError: the transport's user lacks the root role.
        """
        role = self.role(tenant)
        name = _check_user(user)
        _check_password(password, no_password)
        with _AdminRefusal():
            if await self._admin.role_get(role) is None:
                raise ConfigurationError(
                    "tenant", f"tenant {tenant!r} of namespace {self.namespace!r} is not created"
                )
            made, gave = await self._grant(role, name, password, no_password)
            info = await self.get(tenant)
        assert info is not None
        if gave:
            await self._note(
                tenant, "tenant-grant", {"role": role, "user": name, "user_created": made}
            )
        return info

    async def _note(self, tenant: str, kind: str, details: dict[str, object]) -> None:
        """Record a change in the tenant's audit log (best effort; never a password)."""
        actor = f"tenants:{self._transport.config.user or 'admin'}"
        await AuditLog(self._transport, self.keyspace(tenant), actor=actor).note(kind, details)

    async def _grant(
        self, role: str, user: str, password: str | None, no_password: bool
    ) -> tuple[bool, bool]:
        """Grant ``role`` to ``user``: (whether the user was created, whether granted now)."""
        roles = await self._admin.user_get(user)
        made = False
        if roles is None:
            if password is None and not no_password:
                raise ConfigurationError(
                    "password",
                    f"user {user!r} does not exist: create it with a password, or with "
                    "no_password=True for a client-certificate user (CLI: --password-stdin "
                    "or --no-password)",
                )
            await self._admin.user_add(user, password)
            roles, made = [], True
        if role in roles:
            return made, False
        await self._admin.user_grant_role(user, role)
        return made, True

    async def revoke(self, tenant: str, user: str) -> bool:
        """Take the tenant's role from ``user`` (the user stays); ``False`` if it had none.

        Raises:
            InvalidIdError: ``tenant`` is not an id.
            AuthError: the transport's user lacks the root role.
        """
        role = self.role(tenant)
        name = _check_user(user)
        with _AdminRefusal():
            revoked = await self._admin.user_revoke_role(name, role)
        if revoked:
            await self._note(tenant, "tenant-revoke", {"role": role, "user": name})
        return revoked

    async def get(self, tenant: str) -> TenantInfo | None:
        """The tenant's role, users and permissions; ``None`` when it is not created."""
        role = self.role(tenant)
        with _AdminRefusal():
            perms = await self._admin.role_get(role)
            if perms is None:
                return None
            users = await self._users_by_role()
        return self._info(tenant, perms, users.get(role, []))

    async def list(self) -> list[TenantInfo]:
        """Every tenant of the namespace (the roles named after it), sorted by tenant."""
        with _AdminRefusal():
            roles = await self._admin.role_list()
            found = []
            for role in sorted(roles):
                parsed = parse_tenant_role(role)
                if parsed is None or parsed[0] != self.namespace:
                    continue
                perms = await self._admin.role_get(role)
                if perms is not None:  # deleted meanwhile
                    found.append((parsed[1], perms))
            users = await self._users_by_role() if found else {}
        return [self._info(t, p, users.get(self.role(t), [])) for t, p in found]

    async def delete(self, tenant: str, *, delete_keys: bool = False) -> TenantDeletion:
        """Delete the tenant's role and the users it leaves without a role.

        Args:
            tenant: the tenant (an id).
            delete_keys: also delete every key of the tenant: its prefix and its quota
                prefix (limits and reservations), in one transaction.

        Raises:
            InvalidIdError: ``tenant`` is not an id.
            AuthError: the transport's user lacks the root role.
        """
        ks = self.keyspace(tenant)
        role = self.role(tenant)
        deleted: builtins.list[str] = []
        with _AdminRefusal():
            holders = (await self._users_by_role()).get(role, [])
            existed = await self._admin.role_delete(role)
            for user in holders:
                alone = user != "root" and await self._admin.user_get(user) == []
                if alone and await self._admin.user_delete(user):
                    deleted.append(user)
            if existed and not delete_keys:  # with its keys, its log goes too
                await self._note(tenant, "tenant-delete", {"role": role, "users_deleted": deleted})
            keys = 0
            if delete_keys:
                res = await self._transport.txn(
                    [],
                    [Op.delete(ks.prefix, prefix=True), Op.delete(ks.quotas_prefix(), prefix=True)],
                )
                keys = sum(r.deleted for r in res.responses if isinstance(r, DeleteResult))
        return TenantDeletion(existed, tuple(deleted), keys)

    # helpers ------------------------------------------------------------------------------
    def _info(
        self, tenant: str, perms: builtins.list[KeyPermission], users: builtins.list[str]
    ) -> TenantInfo:
        return TenantInfo(
            self.namespace,
            tenant,
            self.role(tenant),
            tuple(sorted(users)),
            tuple(perms),
            self.permissions(tenant),
        )

    async def _users_by_role(self) -> dict[str, builtins.list[str]]:
        out: dict[str, builtins.list[str]] = {}
        for user in await self._admin.user_list():
            for role in await self._admin.user_get(user) or []:
                out.setdefault(role, []).append(user)
        return out


class _AdminRefusal:
    """Re-raise an :class:`AuthError` with what managing tenants needs."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, AuthError) and _ADMIN_HINT not in str(exc):
            raise AuthError(f"{exc} ({_ADMIN_HINT})", code=exc.code, details=exc.details) from exc
