"""``make audit``'s verdict on pip-audit's report (scripts/audit.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

_SPEC = importlib.util.spec_from_file_location(
    "audit", Path(__file__).parents[2] / "scripts" / "audit.py"
)
assert _SPEC is not None and _SPEC.loader is not None
audit: Any = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(audit)

SKIPPED = "Dependency not found on the index and could not be audited"


def test_an_unreachable_advisory_source_is_said_and_not_a_failure() -> None:
    report = {"dependencies": [{"name": n, "skip_reason": f"{SKIPPED}: {n}"} for n in "abc"]}
    code, lines = audit.verdict(report)
    assert code == 0 and lines[0].startswith("pip-audit NOT RUN")


def test_one_package_not_audited_among_audited_ones_fails() -> None:
    report = {"dependencies": [
        {"name": "a", "version": "1", "vulns": []},
        {"name": "b", "skip_reason": f"{SKIPPED}: b"},
    ]}  # fmt: skip
    code, lines = audit.verdict(report)
    assert code == 1 and lines == [f"not audited: {SKIPPED}: b"]


def test_a_known_vulnerability_fails_and_a_clean_report_passes() -> None:
    vulnerable = {"dependencies": [
        {"name": "a", "version": "1", "vulns": [{"id": "GHSA-x"}]},
        {"name": "b", "version": "2", "vulns": []},
    ]}  # fmt: skip
    assert audit.verdict(vulnerable) == (1, ["a 1: GHSA-x"])
    clean = {"dependencies": [{"name": "b", "version": "2", "vulns": []}]}
    assert audit.verdict(clean) == (0, ["pip-audit: 1 packages, no known vulnerabilities"])
