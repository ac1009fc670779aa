"""Every model, imported here so the metadata is complete wherever models are used."""

from davserver.models.accounts import (
    SYSTEM_ROLES,
    ApiKey,
    Group,
    GroupMember,
    InstanceSecret,
    LoginSession,
    LoginThrottle,
    RefreshToken,
    RevokedToken,
    Role,
    User,
    UserRole,
)
from davserver.models.content import Blob, FileVersion, ImageVariant
from davserver.models.locks import DavLock
from davserver.models.logbook import LogEntry, Op
from davserver.models.nodes import DeadProperty, Node, NodeKind, Space
from davserver.models.sharing import Grant, Package, PackageItem

__all__ = [
    "SYSTEM_ROLES",
    "ApiKey",
    "Blob",
    "DavLock",
    "DeadProperty",
    "FileVersion",
    "Grant",
    "Group",
    "GroupMember",
    "ImageVariant",
    "InstanceSecret",
    "LogEntry",
    "LoginSession",
    "LoginThrottle",
    "Node",
    "NodeKind",
    "Op",
    "Package",
    "PackageItem",
    "RefreshToken",
    "RevokedToken",
    "Role",
    "Space",
    "User",
    "UserRole",
]
