"""What status answers say about the account, not the task. Pure.

A 401/403 means the API rejects the key, a 402 that the quota or balance is
exhausted. Either holds until an answer about a task (a status, or
task-not-found) proves the key works again; errors and 429s prove nothing.
"""

from __future__ import annotations

from enum import StrEnum

from exporter.model import OutcomeKind


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


def account_state_after(state: AccountState, kind: OutcomeKind) -> AccountState:
    """The account's state once an answer of this kind came."""
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    if kind in _PROOF_OF_OK:
        return AccountState.OK
    return state
