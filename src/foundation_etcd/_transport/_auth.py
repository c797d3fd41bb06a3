"""etcd's user and role administration (the ``Auth`` service), over an open transport.

The requests go through the transport's unary path (:meth:`Transport._unary`): the same
deadline, the same error translation, the same new login when etcd no longer knows the
token. etcd lets only a user with its ``root`` role run them once authentication is on
(anyone may while it is off); a refusal is an :class:`AuthError`.

Guarantees:
    * Every method is idempotent where etcd allows it: adding what exists, or removing what
      does not, returns ``False`` instead of raising (granting a permission twice, or a role
      to a user twice, is a no-op in etcd itself).
    * Nothing here reads or writes keys: the auth store is etcd's own, outside the keyspace.
    * etcd's other refusals are :class:`EtcdServerError` with etcd's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._core.errors import EtcdServerError
from ._protos import rpc as _rpc

if TYPE_CHECKING:
    from ._client import Transport

__all__ = ["AuthAdmin", "KeyPermission", "PermissionKind"]

PermissionKind = Literal["read", "write", "readwrite"]
_TYPES: dict[str, int] = {"read": 0, "write": 1, "readwrite": 2}  # authpb.Permission.Type
_KINDS: dict[int, PermissionKind] = {0: "read", 1: "write", 2: "readwrite"}


@dataclass(frozen=True, slots=True)
class KeyPermission:
    """One permission of an etcd role: a kind of access to a key or a range of keys.

    Attributes:
        kind: ``"read"``, ``"write"`` or ``"readwrite"``.
        key: the key, or the first key of the range.
        range_end: the end of the range (excluded); ``b""`` for the one key ``key``.
    """

    kind: PermissionKind
    key: bytes
    range_end: bytes = b""

    def __post_init__(self) -> None:
        if self.kind not in _TYPES:
            raise ValueError(f"permission kind must be read, write or readwrite: {self.kind!r}")

    def __str__(self) -> str:
        if not self.range_end:
            return f"{self.kind} {self.key!r}"
        return f"{self.kind} [{self.key!r}, {self.range_end!r})"


def _missing(exc: EtcdServerError, *words: str) -> bool:
    text = (exc.details or str(exc)).lower()
    return any(w in text for w in words)


class AuthAdmin:
    """etcd's role and user administration on ``transport``'s channel and credentials.

    Args:
        transport: an open transport, logged in as a user with the ``root`` role when
            etcd's authentication is on.
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._stub = transport._auth

    async def _call(self, method: str, req: Any, operation: str, *, write: bool = True) -> Any:
        return await self._t._unary(getattr(self._stub, method), req, operation, write=write)

    # status -------------------------------------------------------------------------------
    async def status(self) -> tuple[bool, int]:
        """Whether authentication is on, and the auth store's revision (bumped by each change).

        Once authentication is on, etcd answers only users with the ``root`` role.
        """
        m = await self._call("AuthStatus", _rpc.AuthStatusRequest(), "auth status", write=False)
        return bool(m.enabled), int(m.authRevision)

    async def enable(self) -> None:
        """Turn authentication on (etcd requires a user ``root`` holding the ``root`` role)."""
        await self._call("AuthEnable", _rpc.AuthEnableRequest(), "auth enable")

    # roles --------------------------------------------------------------------------------
    async def role_add(self, name: str) -> bool:
        """Add a role without permissions; ``False`` when it exists."""
        try:
            await self._call("RoleAdd", _rpc.AuthRoleAddRequest(name=name), "role add")
        except EtcdServerError as exc:
            if _missing(exc, "already exist"):
                return False
            raise
        return True

    async def role_get(self, name: str) -> list[KeyPermission] | None:
        """The permissions of a role; ``None`` when there is no such role."""
        try:
            m = await self._call(
                "RoleGet", _rpc.AuthRoleGetRequest(role=name), "role get", write=False
            )
        except EtcdServerError as exc:
            if _missing(exc, "not found"):
                return None
            raise
        return [
            KeyPermission(_KINDS[int(p.permType)], bytes(p.key), bytes(p.range_end)) for p in m.perm
        ]

    async def role_list(self) -> list[str]:
        """Every role's name."""
        m = await self._call("RoleList", _rpc.AuthRoleListRequest(), "role list", write=False)
        return [str(r) for r in m.roles]

    async def role_delete(self, name: str) -> bool:
        """Delete a role (etcd takes it from every user); ``False`` when there was none."""
        try:
            await self._call("RoleDelete", _rpc.AuthRoleDeleteRequest(role=name), "role delete")
        except EtcdServerError as exc:
            if _missing(exc, "not found"):
                return False
            raise
        return True

    async def role_grant(self, name: str, perm: KeyPermission) -> None:
        """Grant ``perm`` to a role (a permission on the same range is replaced).

        Raises:
            EtcdServerError: there is no such role.
        """
        pb = _rpc.AuthRoleGrantPermissionRequest(name=name)
        pb.perm.permType = _TYPES[perm.kind]
        pb.perm.key = perm.key
        pb.perm.range_end = perm.range_end
        await self._call("RoleGrantPermission", pb, "role grant permission")

    async def role_revoke(self, name: str, key: bytes, range_end: bytes = b"") -> bool:
        """Revoke a role's permission on exactly that range; ``False`` when it had none."""
        req = _rpc.AuthRoleRevokePermissionRequest(role=name, key=key, range_end=range_end)
        try:
            await self._call("RoleRevokePermission", req, "role revoke permission")
        except EtcdServerError as exc:
            if _missing(exc, "not granted", "not found"):
                return False
            raise
        return True

    # users --------------------------------------------------------------------------------
    async def user_add(self, name: str, password: str | None) -> bool:
        """Add a user; ``False`` when it exists (its password is then left as it is).

        Args:
            name: the user's name (for a client certificate: its common name, CN).
            password: the password, or ``None`` for a user that cannot log in with one
                (etcd's ``--no-password``: it authenticates with a client certificate).
        """
        req = _rpc.AuthUserAddRequest(name=name, password=password or "")
        if password is None:
            req.options.no_password = True
        try:
            await self._call("UserAdd", req, "user add")
        except EtcdServerError as exc:
            if _missing(exc, "already exist"):
                return False
            raise
        return True

    async def user_get(self, name: str) -> list[str] | None:
        """The roles of a user; ``None`` when there is no such user."""
        try:
            m = await self._call(
                "UserGet", _rpc.AuthUserGetRequest(name=name), "user get", write=False
            )
        except EtcdServerError as exc:
            if _missing(exc, "not found"):
                return None
            raise
        return [str(r) for r in m.roles]

    async def user_list(self) -> list[str]:
        """Every user's name."""
        m = await self._call("UserList", _rpc.AuthUserListRequest(), "user list", write=False)
        return [str(u) for u in m.users]

    async def user_delete(self, name: str) -> bool:
        """Delete a user; ``False`` when there was none."""
        try:
            await self._call("UserDelete", _rpc.AuthUserDeleteRequest(name=name), "user delete")
        except EtcdServerError as exc:
            if _missing(exc, "not found"):
                return False
            raise
        return True

    async def user_grant_role(self, user: str, role: str) -> None:
        """Grant a role to a user (a no-op when it holds it).

        Raises:
            EtcdServerError: there is no such user or role.
        """
        req = _rpc.AuthUserGrantRoleRequest(user=user, role=role)
        await self._call("UserGrantRole", req, "user grant role")

    async def user_revoke_role(self, user: str, role: str) -> bool:
        """Take a role from a user; ``False`` when the user did not hold it or does not exist."""
        req = _rpc.AuthUserRevokeRoleRequest(name=user, role=role)
        try:
            await self._call("UserRevokeRole", req, "user revoke role")
        except EtcdServerError as exc:
            if _missing(exc, "not granted", "not found"):
                return False
            raise
        return True
