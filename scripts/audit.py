"""``make audit``: known vulnerabilities in the installed dependencies (pip-audit), strictly:
every package must be audited and none may have a known vulnerability.

When pip-audit cannot reach its advisory source it answers for every package at once, with a
connection error or with every package "not found" (the per-release API answering 404). This
says so plainly and exits 0 (the audit did not run here), rather than failing every ``make
check`` on such a machine, or reporting "no known vulnerabilities" for packages it never
checked. One package not audited among audited ones is a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

UNREACHABLE = ("connection", "resolve", "timed out", "unreachable", "max retries", "service error")


def main() -> int:
    pip_audit = Path(sys.executable).with_name("pip-audit")
    done = subprocess.run(
        [str(pip_audit), "--skip-editable", "--progress-spinner", "off", "-f", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        message = (done.stderr or done.stdout).strip()
        if any(word in message.lower() for word in UNREACHABLE):
            print(f"pip-audit NOT RUN: its advisory source is unreachable ({message[-200:]})")
            return 0
        print(message)
        return done.returncode or 1
    code, lines = verdict(report)
    print("\n".join(lines))
    return code


def verdict(report: dict[str, Any]) -> tuple[int, list[str]]:
    """The exit status and what to print, from pip-audit's JSON report."""
    packages = report.get("dependencies", [])
    skipped = [p for p in packages if p.get("skip_reason")]
    vulnerable = [p for p in packages if p.get("vulns")]
    if packages and len(skipped) == len(packages):
        return 0, [
            f"pip-audit NOT RUN: its advisory source knows none of the {len(packages)} installed "
            f"packages (it is unreachable from this machine: {skipped[0]['skip_reason']})"
        ]
    lines = [
        f"{p['name']} {p.get('version', '')}: {', '.join(v['id'] for v in p['vulns'])}"
        for p in vulnerable
    ]
    lines += [f"not audited: {p['skip_reason']}" for p in skipped]
    if vulnerable or skipped:
        return 1, lines
    return 0, [f"pip-audit: {len(packages)} packages, no known vulnerabilities"]


if __name__ == "__main__":
    sys.exit(main())
