"""Docs that cannot drift: the API examples run, every command is documented,
the README's quick start works, and --emit-matches does what api.md says."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from imgmatch.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.S)


def test_api_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) >= 3
    monkeypatch.chdir(ROOT)
    namespace: dict = {"workdir": tmp_path}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, "docs/api.md", "exec"), namespace)
    assert "citylist" in out.getvalue()


def test_readme_example_runs(tmp_path, monkeypatch):
    """The README's Python example, as a new user would paste it: in a folder
    holding the two files it names (a photo and a repost of it)."""
    (block,) = python_blocks(ROOT / "README.md")
    (tmp_path / "ad.jpg").write_bytes((ROOT / "fixtures/originals/astronaut.jpg").read_bytes())
    (tmp_path / "suspect.jpg").write_bytes(
        (ROOT / "fixtures/reposts/astronaut_citylist_2023.jpg").read_bytes())
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    assert "['citylist']" in out.getvalue()


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names += _commands(command, f"{prefix}{name} ")
        else:
            names.append(prefix + name)
    return names


def test_every_command_has_help_and_a_docs_entry():
    doc = (ROOT / "docs" / "cli.md").read_text()
    headings = set(re.findall(r"^## (\S+)", doc, flags=re.M))
    for name in _commands(cli):
        top = name.split()[0]
        assert top in headings, f"docs/cli.md has no section for {top}"
        if " " in name:
            assert f"imgmatch {name}" in doc, f"docs/cli.md does not show 'imgmatch {name}'"
        command = cli
        for part in name.split():
            command = command.commands[part]
        assert command.help, f"{name} has no help text"


def test_readme_quick_start_is_two_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", readme, flags=re.S).group(1)
    assert [line.split()[0] for line in block.strip().splitlines()] == [
        "scripts/demo", "scripts/test"]


def test_demo_prints_the_cross_platform_report(tmp_path):
    env = dict(os.environ, IMGMATCH_DEMO_DIR=str(tmp_path / "demo"),
               VIRTUAL_ENV=sys.prefix,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "seen on more than one platform" in out
    assert "route: backpage-clone" in out          # the astronaut's story, oldest first
    assert re.search(r"cluster \d+: 4 platforms", out)
    assert "astronaut_mirror_crop10.jpg:" in out


def test_emit_matches_writes_one_line_per_item(tmp_path):
    fixtures = ROOT / "fixtures"
    lines = [
        {"path": str(fixtures / "originals" / "astronaut.jpg"), "platform": "a"},
        {"path": str(fixtures / "reposts" / "astronaut_citylist_2023.jpg"), "platform": "b"},
        {"path": str(fixtures / "originals" / "astronaut.jpg"), "platform": "c"},
        {"path": str(tmp_path / "missing.jpg")},
    ]
    done = subprocess.run(
        [sys.executable, "-m", "imgmatch.cli", "--db", str(tmp_path / "c.db"), "ingest",
         "--jsonl", "-", "--emit-matches", "--workers", "1"],
        input="".join(json.dumps(x) + "\n" for x in lines), capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 1
    out = [json.loads(x) for x in done.stdout.splitlines()]
    assert [o["status"] for o in out] == ["added", "added", "known", "failed"]
    assert out[0]["matches"] == []
    (link,) = out[1]["matches"]
    assert link["sha256"] == out[0]["sha256"] and link["score"] >= 0.5
    assert [s["platform"] for s in link["sightings"]] == ["a"]
    assert {s["platform"] for s in out[2]["matches"][0]["sightings"]} == {"b"}
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert summary["images_added"] == 2


@pytest.mark.parametrize("doc", ["README.md", "docs/cli.md", "docs/api.md", "docs/design.md",
                                 "docs/benchmarks.md", "docs/scale-out.md"])
def test_docs_name_no_machine_paths(doc):
    text = (ROOT / doc).read_text()
    assert "/tmp/" not in text and "/work/" not in text and "/root/" not in text


def test_api_md_names_every_public_name_and_collection_method():
    """The Types tables of docs/api.md list what the package exports (the
    exceptions have errors.py's tree) and everything a Collection offers."""
    import imgmatch
    from imgmatch import errors

    doc = (ROOT / "docs" / "api.md").read_text()
    names = set(imgmatch.__all__) - set(errors.__all__)
    assert [n for n in sorted(names) if f"`{n}" not in doc] == []
    members = [n for n in vars(imgmatch.Collection) if not n.startswith("_")]
    assert [m for m in members if not re.search(rf"`{m}[`(]", doc)] == []
