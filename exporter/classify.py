"""Failure reasons: free-text upstream errors -> a small, bounded set of names.

Rules are tried in order and the first match wins; the last resort is
`unknown`. The raw text is kept in the store for people, never in a label.
Each reason belongs to a class: `user` (the caller's prompt or parameters)
or `service` (the API or its providers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from exporter.config import FailureClass, FailureReason, default_failure_class

UNKNOWN_REASON = "unknown"
# Error texts can be megabytes (hostile or buggy upstream); the reason is in
# the first words, and regexes over huge text cost CPU on every failure.
CLASSIFY_PREFIX_CHARS = 2048


class ReasonClassifier:
    def __init__(self, rules: Iterable[FailureReason]) -> None:
        rules = list(rules)
        self._rules = [(rule.reason, re.compile(rule.pattern)) for rule in rules]
        # The config allows one class per reason; the first rule names it.
        self._classes: dict[str, FailureClass] = {}
        for rule in rules:
            self._classes.setdefault(rule.reason, rule.failure_class)

    @property
    def reasons(self) -> list[str]:
        """Every value the classifier can return, in rule order."""
        names = list(dict.fromkeys(reason for reason, _ in self._rules))
        return [*names, UNKNOWN_REASON] if UNKNOWN_REASON not in names else names

    @property
    def classes(self) -> dict[str, FailureClass]:
        """Every reason the classifier can return -> its class."""
        return {reason: self.class_of(reason) for reason in self.reasons}

    def class_of(self, reason: str) -> FailureClass:
        return self._classes.get(reason) or default_failure_class(reason)

    def classify(self, error: str | None) -> str:
        if not error:
            return UNKNOWN_REASON
        text = error[:CLASSIFY_PREFIX_CHARS]
        for reason, pattern in self._rules:
            if pattern.search(text):
                return reason
        return UNKNOWN_REASON
