"""Resolve the ``gpu`` extra's pins against the package index without installing anything (CI, a CPU machine).

``pip install --dry-run --no-deps`` finds, for each requirement of the extra, the newest release that satisfies it
and reads its metadata (an sdist's metadata is built, so a pin that cannot even be prepared fails here). The CUDA
chain below those packages (torch's CUDA wheels, nvidia-*) is not resolved: that takes minutes and gigabytes of
metadata downloads. What the resolved vLLM pins exactly (``name==version``) is then checked against
requirements.txt, so the extra and the core requirements cannot contradict each other.

Usage: ``python scripts/check_gpu_extra.py [--extra gpu] [--timeout 120]``; exit 1 with the reason on a broken pin.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extra_requirements(name: str, setup_py: Path = REPO / "setup.py") -> list[str]:
    """The requirement strings of one extra, read from setup.py's ``extras_require`` literal (setup.py not run)."""
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            extras = ast.literal_eval(node.value)
            if name not in extras:
                raise SystemExit(f"setup.py has no extra {name!r} (extras: {', '.join(extras)})")
            return list(extras[name])
    raise SystemExit("setup.py has no extras_require")


def core_requirements(path: Path = REPO / "requirements.txt") -> dict:
    """requirements.txt as name -> packaging Requirement (comments dropped)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    reqs = [Requirement(r) for line in path.read_text().splitlines() if (r := line.split("#", 1)[0].strip())]
    return {canonicalize_name(r.name): r for r in reqs}


def resolve(requirements: list[str], timeout: float) -> list[dict]:
    """pip's report of the releases that satisfy ``requirements`` (no dependencies, nothing installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
               "--report", str(report), *requirements]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise SystemExit(f"the extra does not resolve: {' '.join(requirements)}\n{res.stderr[-3000:]}")
        return json.loads(report.read_text())["install"]


def contradictions(installs: list[dict], core: dict) -> list[str]:
    """Exact pins (``==``) in the resolved packages' dependencies that requirements.txt does not allow."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = []
    for item in installs:
        meta = item["metadata"]
        for spec in meta.get("requires_dist") or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            ours = core.get(canonicalize_name(req.name))
            pins = [s.version for s in req.specifier if s.operator == "=="]
            for version in pins:
                if ours is not None and not ours.specifier.contains(version, prereleases=True):
                    out.append(f"{meta['name']} {meta['version']} pins {req.name}=={version}, requirements.txt "
                               f"asks {ours}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--extra", default="gpu", help="the setup.py extra to resolve (default: gpu)")
    p.add_argument("--timeout", type=float, default=120, help="seconds pip may take (default: 120)")
    args = p.parse_args(argv)
    t0 = time.time()
    requirements = extra_requirements(args.extra)
    installs = resolve(requirements, args.timeout)
    problems = contradictions(installs, core_requirements())
    versions = ", ".join(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs)
    print(f"extra [{args.extra}] {' '.join(requirements)} -> {versions} ({time.time() - t0:.1f} s)")
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
