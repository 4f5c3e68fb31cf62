"""Pins live in constraints.txt; asv.conf.json's matrix must agree with it, name by name."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _asv_conf() -> dict:
    text = (ROOT / "asv.conf.json").read_text()
    return json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))


def test_pins_asv_matrix_matches_constraints():
    pins = _constraints()
    req = _asv_conf()["matrix"]["req"]
    assert list(req)[0] == "torch"  # asv installs in order: torch first, pinned
    for name, version in req.items():
        assert pins.get(_norm(name)) == version, (name, version, pins.get(_norm(name)))


def test_pins_every_declared_dependency_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == []  # an unpinned torch here would pull a CUDA build
    pins = _constraints()
    for extra, reqs in project["optional-dependencies"].items():
        for req in reqs:
            name = _norm(re.split(r"[\[<>=!~ ]", req, maxsplit=1)[0])
            assert name in pins, f"{req} (extra {extra!r}) has no pin in constraints.txt"
    assert pins["torch"] == "2.13.0"
