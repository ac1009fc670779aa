"""First start: the schema, the blob folder and the first admin."""

from __future__ import annotations

from pathlib import Path

from davserver.app import Application
from davserver.config import Settings
from davserver.db.migrate import upgrade


def prepare(settings: Settings) -> tuple[Application, str | None]:
    """Migrate the database, create the first admin if missing, and build the application.

    Returns the application and the admin password when one was generated (to print once).
    """
    if not settings.database.url:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = Application(settings)
    upgrade(app.db)
    generated = app.accounts.ensure_admin(settings.admin.user, settings.admin.password or None)
    return app, generated
