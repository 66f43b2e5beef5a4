import pytest

from exporter.classify import ReasonClassifier
from exporter.config import DEFAULT_FAILURE_REASONS, FailureReason

DEFAULT = ReasonClassifier(DEFAULT_FAILURE_REASONS)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Your request was rejected by the safety system", "content_policy"),
        ("Content policy violation: prompt contains prohibited content", "content_policy"),
        ("Insufficient quota: please top up your balance", "quota"),
        ("Rate limit exceeded at the provider", "rate_limited"),
        ("Generation timed out after 300 seconds", "timeout"),
        ("Upstream provider timeout", "timeout"),
        ("Invalid prompt: must be under 4000 characters", "invalid_request"),
        ("Internal server error", "upstream_error"),
        ("The model is overloaded, try later", "upstream_error"),
        ("something odd happened", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_default_rules(text: str | None, reason: str) -> None:
    assert DEFAULT.classify(text) == reason


def test_rules_apply_in_order_and_reasons_are_bounded() -> None:
    rules = [FailureReason(reason="mine", pattern="(?i)policy"), *DEFAULT_FAILURE_REASONS]
    classifier = ReasonClassifier(rules)
    assert classifier.classify("content policy") == "mine"
    assert classifier.reasons[0] == "mine"
    assert classifier.reasons[-1] == "unknown"
    assert len(set(classifier.reasons)) == len(classifier.reasons)


def test_huge_text_is_classified_by_its_start() -> None:
    assert DEFAULT.classify("safety system " + "x" * 5_000_000) == "content_policy"
    assert DEFAULT.classify("x" * 5_000_000 + " safety") == "unknown"
