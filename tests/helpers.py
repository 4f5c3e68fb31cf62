"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def hard_copy_steps(loss, updater, steps: int = 8) -> list[bool]:
    """After each of ``steps`` updater steps (the online network changed before each): is the
    target network a copy of the online one? ``loss`` holds both (torchrl's ``DQNLoss``)."""
    import torch

    online = loss.value_network_params.flatten_keys()
    target = loss.target_value_network_params.flatten_keys()
    synced = []
    for _ in range(steps):
        online.apply(lambda p: p.data.add_(1.0))
        updater.step()
        synced.append(all(torch.equal(online[k], target[k]) for k in online.keys()))
    return synced


#: the benchmarks of ``published_asv_dashboard``: name -> (param_names, params)
TINY_ASV_BENCHMARKS = {"tiny.Sum.time_sum": ([], []),
                       "tiny.Sort.time_sort": (["size"], [["10", "1000"]])}


def published_asv_dashboard(root: Path) -> Path:
    """What ``asv publish`` writes for a tiny project: a git repository of three commits, a
    result per commit for each of ``TINY_ASV_BENCHMARKS`` (times growing by commit) on machine
    ``m1``; returns the html_dir (``root/html``). ~0.5 s, no benchmark runs."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "rlgauge", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "rlgauge", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True, env=env)
    for day in (1, 2, 3):
        date = f"2026-01-0{day}T12:00:00"
        subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", f"day {day}"], cwd=root,
                       check=True, env={**env, "GIT_AUTHOR_DATE": date,
                                        "GIT_COMMITTER_DATE": date})
    commits = subprocess.run(["git", "rev-list", "--reverse", "main"], cwd=root, check=True,
                             capture_output=True, text=True, env=env).stdout.split()
    (root / "asv.conf.json").write_text(json.dumps(
        {"version": 1, "project": "tiny", "repo": ".", "dvcs": "git", "branches": ["main"],
         "results_dir": "results", "html_dir": "html"}))
    machine = {"machine": "m1", "arch": "x86_64", "cpu": "cpu", "num_cpu": "2", "os": "Linux",
               "ram": "1"}
    results = root / "results"
    (results / "m1").mkdir(parents=True)
    (results / "m1" / "machine.json").write_text(json.dumps({**machine, "version": 1}))
    (results / "benchmarks.json").write_text(json.dumps({"version": 2, **{
        name: {"name": name, "type": "time", "unit": "seconds", "param_names": names,
               "params": params, "version": "1", "code": "pass", "timeout": 60}
        for name, (names, params) in TINY_ASV_BENCHMARKS.items()}}))
    for i, commit in enumerate(commits):
        values = {"tiny.Sum.time_sum": [0.001 * (1 + i)],
                  "tiny.Sort.time_sort": [0.002 * (1 + i), 0.02 * (1 + i)]}
        (results / "m1" / f"{commit[:8]}-existing-py.json").write_text(json.dumps({
            "commit_hash": commit, "env_name": "existing-py",
            "date": 1767268800000 + i * 86_400_000, "params": {**machine, "python": "3.11"},
            "python": "3.11", "requirements": {}, "env_vars": {}, "durations": {},
            "result_columns": ["result", "params", "version", "started_at", "duration"],
            "results": {name: [values[name], TINY_ASV_BENCHMARKS[name][1], "1", 0, 1.0]
                        for name in TINY_ASV_BENCHMARKS},
            "version": 2}))
    subprocess.run([sys.executable, "-m", "asv", "publish", "--no-pull", "--config",
                    "asv.conf.json"], cwd=root, check=True, capture_output=True, env=env)
    return root / "html"


#: git's identity for commits made by tests, and no user or system configuration
GIT_ENV = {"GIT_AUTHOR_NAME": "rlgauge", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "rlgauge", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git_repo(root: Path, commits: list[tuple[str, dict[str, str]]]) -> list[str]:
    """A git repository at ``root`` (branch main) with one commit per ``(message, {path:
    text})``, oldest first: each writes its files over the previous commit's tree. Returns the
    commits' shas, oldest first."""
    env = {**os.environ, **GIT_ENV}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                              text=True, env=env).stdout.strip()

    root.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main")
    shas = []
    for message, files in commits:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        git("add", "-A")
        git("commit", "-q", "--allow-empty", "-m", message)
        shas.append(git("rev-parse", "HEAD"))
    return shas
