"""Pins live in constraints.txt; asv.conf.json's matrix must agree with it, name by name."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from harness import installs

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


# --------------------------------------------------------------------------- harness.installs


def test_installs_torch_is_the_constraints_pin_unless_the_user_names_another(monkeypatch):
    monkeypatch.delenv("RLGAUGE_TORCH", raising=False)
    assert installs.torch_requirement() == f"torch=={_constraints()['torch']}"
    assert "torch==2.13.0" in installs.constraints_text().splitlines()
    monkeypatch.setenv("RLGAUGE_TORCH", "torch==2.12.1")
    assert installs.torch_requirement() == "torch==2.12.1"
    lines = installs.constraints_text(drop=("torchrl",)).splitlines()
    assert not any(ln.startswith(("torch==", "torchrl==")) for ln in lines)
    assert any(ln.startswith("tensordict==") for ln in lines)


def test_installs_uv_gets_pips_wheelhouse_and_keeps_a_users_own(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/wheels/here")
    env = installs.uv_environ({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "UV_FIND_LINKS": "/wheels/here", "UV_COMPILE_BYTECODE": "1"}
    mine = {"UV_FIND_LINKS": "/mine", "UV_COMPILE_BYTECODE": "0"}
    assert installs.uv_environ(mine) == mine


def test_installs_is_standard_library_only():
    """The noxfile loads harness/installs.py by path, outside the project's venv."""
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('i', "
            f"{str(ROOT / 'harness' / 'installs.py')!r}); m = importlib.util.module_from_spec(s); "
            "s.loader.exec_module(m); print(sorted(n.split('.')[0] for n in sys.modules "
            "if n.split('.')[0] in {'harness', 'torch', 'numpy'}))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
