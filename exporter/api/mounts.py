"""What `serve.serve` mounts on the web server: the task API and the status page."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from exporter.api.app import ApiStore, TaskApi
from exporter.api.auth import TOKEN_ENV, BearerCheck, read_token, require_token
from exporter.api.status_page import PATH as STATUS_PATH
from exporter.api.status_page import StatusPage
from exporter.config import Config
from exporter.intake import RegistrationRecorder, TaskIntake
from exporter.logsetup import add_secret

log = logging.getLogger(__name__)
API_PREFIX = "/api/"  # the task API checks its own bearer token

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WebApis:
    """Reads the token when built (so a bad token file stops the start), mounts later."""

    def __init__(self, config: Config, token: SecretStr | None) -> None:
        self.config = config
        self.token = token

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> WebApis:
        """Raises `auth.TokenError` (a ValueError) for an unusable token."""
        token = read_token(config, environ)
        if token is not None:
            add_secret(token.get_secret_value())
        return cls(config, token)

    def mounts(
        self,
        store: ApiStore,
        recorder: RegistrationRecorder,
        intake: TaskIntake | None = None,
    ) -> dict[str, WSGIApp]:
        settings = self.config.api_server
        if self.token is None:
            log.info(
                "task API off (/api/v1/): set $%s or api_server.token_file to turn it on", TOKEN_ENV
            )
        else:
            log.info("task API on /api/v1/ (bearer token required)")
        api = TaskApi(
            store,
            recorder,
            self.token,
            max_body_bytes=settings.max_body_bytes,
            max_batch_size=settings.max_batch_size,
            intake=intake,
            accounts=self.config.account_names,
        )
        status_page: WSGIApp = StatusPage(store)
        if settings.status_page_auth == "token" and self.token is not None:
            status_page = require_token(status_page, BearerCheck(self.token))
        return {API_PREFIX: api, STATUS_PATH: status_page}

    def own_auth_prefixes(self) -> tuple[str, ...]:
        """Paths whose app checks the bearer token itself: basic auth leaves them alone."""
        if self.config.api_server.status_page_auth == "token":
            return (API_PREFIX, STATUS_PATH)
        return (API_PREFIX,)
