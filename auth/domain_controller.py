"""WsgiDAV's domain controller, backed by the users table.

WsgiDAV builds it as ``cls(wsgidav_app, config)``; it finds the account service in
``config["davserver"]["accounts"]``. On success the acting user is put in
``environ["davserver.actor"]`` for the provider and the services.
"""

from __future__ import annotations

from typing import Any

from wsgidav.dc.base_dc import BaseDomainController

from davserver.services.accounts import AccountService


class DbDomainController(BaseDomainController):
    def __init__(self, wsgidav_app: Any, config: dict[str, Any]) -> None:
        super().__init__(wsgidav_app, config)
        own = config["davserver"]
        self.accounts: AccountService = own["accounts"]
        self.realm: str = own["realm"]

    def __str__(self) -> str:
        return f"{self.__class__.__name__}({self.realm!r})"

    def get_domain_realm(self, path_info: str, environ: dict[str, Any] | None) -> str:
        return self.realm

    def require_authentication(self, realm: str, environ: dict[str, Any] | None) -> bool:
        return True

    def supports_http_digest_auth(self) -> bool:
        return False

    def basic_auth_user(
        self, realm: str, user_name: str, password: str, environ: dict[str, Any]
    ) -> bool:
        actor = self.accounts.authenticate(
            user_name,
            password,
            remote_addr=environ.get("REMOTE_ADDR"),
            user_agent=environ.get("HTTP_USER_AGENT"),
        )
        if actor is None:
            return False
        environ["davserver.actor"] = actor
        return True

    def digest_auth_user(self, realm: str, user_name: str, environ: dict[str, Any]) -> bool:
        return False
