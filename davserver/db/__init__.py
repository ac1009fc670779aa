"""Database plumbing: declarative base, portable column types, engines and sessions."""

from davserver.db.base import Base
from davserver.db.engine import Database

__all__ = ["Base", "Database"]
