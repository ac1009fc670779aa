"""The small JSON API under /api/v1/: tokens, sessions and API keys, for scripts."""

from davserver.api.app import ApiApp

__all__ = ["ApiApp"]
