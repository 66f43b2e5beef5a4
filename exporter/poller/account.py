"""What status answers say about the account, not the task.

A 401/403 means the API rejects the key, a 402 that the quota or balance is
exhausted. Either holds until an answer about a task (a status, or
task-not-found) proves the key works again; errors and 429s prove nothing.
`account_state_after` is pure; `AccountWatcher` is the poll listener that
keeps the state, logs its changes and exports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum

from exporter.model import OutcomeKind, PollOutcome
from exporter.poller.events import PollListener

log = logging.getLogger(__name__)


class AccountState(StrEnum):
    """Values of `lemondata_api_account_state{state}`."""

    OK = "ok"
    KEY_REJECTED = "key_rejected"
    QUOTA_EXHAUSTED = "quota_exhausted"


_PROBLEMS = {
    OutcomeKind.UNAUTHORIZED: AccountState.KEY_REJECTED,
    OutcomeKind.PAYMENT_REQUIRED: AccountState.QUOTA_EXHAUSTED,
}
# Answers that need a working key and account.
_PROOF_OF_OK = (OutcomeKind.REPORT, OutcomeKind.NOT_FOUND)

MESSAGES = {
    AccountState.KEY_REJECTED: "the API rejects the API key (HTTP 401/403): check "
    "LEMONDATA_API_KEY or api.key_file; polling goes on with backoff",
    AccountState.QUOTA_EXHAUSTED: "the API reports the account's quota or balance is "
    "exhausted (HTTP 402); polling goes on with backoff",
    AccountState.OK: "the API accepts requests again",
}
REDIRECT_MESSAGE = (
    "the API answered with a redirect, which is never followed (the key must not leave "
    "api.base_url): check api.base_url"
)


def account_state_after(state: AccountState, kind: OutcomeKind) -> AccountState:
    """The account's state once an answer of this kind came."""
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    if kind in _PROOF_OF_OK:
        return AccountState.OK
    return state


class AccountWatcher(PollListener):
    """Follows the account's state through every answer; each change is logged
    once per episode and handed to `on_state` (the metric). A redirect (a wrong
    `api.base_url`) is logged once per episode too."""

    def __init__(
        self, on_state: Callable[[str], None] = lambda state: None, account: str | None = None
    ) -> None:
        """`account`: the name of one of several accounts, for the log."""
        self.state = AccountState.OK
        self._on_state = on_state
        self._redirected = False
        self._whose = f"account {account}: " if account else ""

    def answer(self, outcome: PollOutcome, probe: bool) -> None:
        state = account_state_after(self.state, outcome.kind)
        if state is not self.state:
            if state is AccountState.OK:
                log.info("%s%s", self._whose, MESSAGES[state])
            else:
                log.error("%s%s", self._whose, MESSAGES[state])
            self.state = state
            self._on_state(state.value)
        if outcome.kind is OutcomeKind.REDIRECT and not self._redirected:
            log.error("%s", REDIRECT_MESSAGE)
        if outcome.kind in (OutcomeKind.REDIRECT, OutcomeKind.REPORT, OutcomeKind.NOT_FOUND):
            self._redirected = outcome.kind is OutcomeKind.REDIRECT
