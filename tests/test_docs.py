import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from conftest import REPO


def test_generated_blocks_are_up_to_date():
    result = subprocess.run([sys.executable, "tools/update_docs.py", "--check"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_update_docs_check_names_a_stale_block_and_writes_nothing(tmp_path):
    pages = [p.relative_to(REPO) for p in [REPO / "README.md", REPO / "CHANGELOG.md",
                                           *(REPO / "docs").glob("*.md")] if p.is_file()]
    for page in pages:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / page, tmp_path / page)
    shutil.copytree(REPO / "eval" / "results", tmp_path / "eval" / "results")
    # one block of each page that has blocks goes stale: a line added inside it
    stale = {}
    for page in pages:
        text = (tmp_path / page).read_text()
        key = re.search(r"<!-- ([a-z0-9-]+):end -->", text)
        if key:
            stale[page] = text.replace(key.group(0), "a hand edit\n" + key.group(0), 1)
            (tmp_path / page).write_text(stale[page])
    assert stale
    command = [sys.executable, "tools/update_docs.py", "--root", str(tmp_path)]
    result = subprocess.run(command + ["--check"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    for page, text in stale.items():
        key = re.search(r"<!-- ([a-z0-9-]+):end -->", text).group(1)
        assert f"out of date: {page.as_posix()}: {key}" in result.stderr
        assert (tmp_path / page).read_text() == text  # --check writes nothing
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for page in pages:
        assert (tmp_path / page).read_text() == (REPO / page).read_text()


def test_readme_shows_the_test_command_ci_runs():
    ci_commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                   if re.match(r"\s*python -m pytest", line)]
    assert len(ci_commands) == 1
    setup = (REPO / "README.md").read_text().split("## Set-up", 1)[1].split("```sh", 1)[1]
    install, tests = setup.split("```", 1)[0].strip().splitlines()
    assert tests.endswith(ci_commands[0])
    assert "pip install -c .ci/constraints.txt" in install and install.endswith("python -m zoo")


# The pages whose code blocks run and whose links are checked.
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\n$")


def code_blocks(text: str) -> list[dict]:
    """Every fenced block: its language, code, first code line (1-based), the ``## `` section it
    sits in, and the reason it is not run (an ``<!-- not run: reason -->`` line right above it)."""
    blocks = []
    for m in FENCE.finditer(text):
        before = text[:m.start()]
        headings = [h for h in re.findall(r"^## (.+)$", FENCE.sub("", before), re.M)]
        marker = NOT_RUN.search(before[before.rfind("\n", 0, len(before) - 1) + 1:])
        blocks.append({"lang": m.group(1), "code": m.group(2),
                       "line": before.count("\n") + 2, "section": headings[-1] if headings else "",
                       "not_run": marker.group(1) if marker else None})
    return blocks


def python_blocks(page: Path) -> list[dict]:
    return [b for b in code_blocks(page.read_text()) if b["lang"] == "python"]


def test_code_blocks_parse_sections_and_not_run_markers():
    text = ("# T\n\n```python\na = 1\n```\n\n## One\n\n```sh\nls\n```\n\n<!-- not run: needs a GPU -->\n"
            "```python\nb = 2\n```\n\n## Two\n\n```python\nc = 3\n```\n")
    blocks = code_blocks(text)
    assert [(b["lang"], b["section"], b["not_run"], b["line"]) for b in blocks] == [
        ("python", "", None, 4), ("sh", "One", None, 10), ("python", "One", "needs a GPU", 15),
        ("python", "Two", None, 21)]
    assert text.splitlines()[blocks[2]["line"] - 1] == "b = 2"


# What the pages' Python blocks leave to the reader, made real: an input, a data loader, the
# files and the Hub they point at (the loopback stand-in, which push_to_hub's uploads reach).
BLOCK_PRELUDE = """
import os, sys, tempfile
from hub_server import FakeHub  # tests/support/ is on PYTHONPATH
hub = FakeHub().start()
os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=tempfile.mkdtemp(), HF_HUB_DISABLE_TELEMETRY="1",
                  HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost")
import torch, zoo, zoo.hub

x = torch.randn(2, 3, 64, 64)
loader = [(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))]
hub.files[("owner/name", "main", "model.safetensors")] = open({ilm!r}, "rb").read()

class LoopbackApi:  # HfApi as push_to_hub uses it, uploading into the stand-in
    def __init__(self, token=None, **kwargs):
        self.endpoint = hub.url
    def create_repo(self, repo_id, **kwargs):
        pass
    def upload_folder(self, repo_id, folder_path, **kwargs):
        for name in os.listdir(folder_path):
            hub.files[(repo_id, "main", name)] = open(os.path.join(folder_path, name), "rb").read()
        return type("CommitInfo", (), {{"oid": "main"}})()
    def create_tag(self, repo_id, **kwargs):
        pass

zoo.hub.HfApi, zoo.hub.get_token = LoopbackApi, lambda: "hf_loopback"
"""

# Each section's blocks run in order in a namespace of their own (the prelude's names only), so
# a section never leans on another; a traceback names the page and its line.
BLOCK_RUNNER = """
import sys, traceback
_prelude, _failed = dict(globals()), []
for _section, _blocks in {sections!r}:
    _namespace = dict(_prelude)
    try:
        for _line, _code in _blocks:
            exec(compile("\\n" * (_line - 1) + _code, {page!r}, "exec"), _namespace)
    except BaseException:
        _failed.append(_section)
        print(f"--- {page} ## {{_section}}:", file=sys.stderr)
        traceback.print_exc()
sys.exit(f"failed: {{_failed}}" if _failed else 0)
"""


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)],
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_python_blocks_run(page, tmp_path):
    ilm = zoo.get_weight("resnet20_ilm.cifar10").fetch(progress=False)
    sections = {}
    for block in python_blocks(page):
        if block["not_run"] is None:
            code = block["code"].replace("path/to/normzoo", str(REPO)).replace(
                "path/to/model.safetensors", str(ilm))
            sections.setdefault(block["section"], []).append((block["line"], code))
    name = page.relative_to(REPO).as_posix()
    code = (BLOCK_PRELUDE.format(ilm=str(ilm))
            + BLOCK_RUNNER.format(sections=list(sections.items()), page=name))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "NORMZOO_"))}
    # tests/support only: tests/ itself holds folders named zoo/ and train/, which would shadow
    # the installed packages as namespace packages in a process started outside the repo
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests" / "support"),
                                                      env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_python_blocks_not_run_are_few_and_reported():
    marked = [(page.relative_to(REPO).as_posix(), block) for page in PAGES
              for block in python_blocks(page) if block["not_run"] is not None]
    for _, block in marked:  # they must still be Python
        compile(block["code"], "<block>", "exec")
    stray = [(page.name, line) for page in PAGES
             for line in re.findall(r"<!-- not run: .+? -->\n(?!```python\n)(.*)", page.read_text())]
    assert not stray, f"a <!-- not run --> marker must sit right above a python block: {stray}"
    assert len(marked) <= 3, "keep the blocks the tests cannot run to very few"
    if marked:
        pytest.skip("python blocks not run: " + "; ".join(
            f"{page}:{block['line']} ({block['not_run']})" for page, block in marked))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(text: str) -> str:
    """The text without its fenced blocks and inline code, where a link is not a link."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _anchors(page: Path) -> set:
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    assert page.is_file()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or REPO.resolve() not in (resolved, *resolved.parents):
            broken.append(f"{target}: no such file in the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t.partition("#")[0]).resolve()
              for t in re.findall(r"\]\(([^)\s#]+)[^)]*\)", _prose((REPO / "README.md").read_text()))}
    assert [p.name for p in REPO.glob("docs/*.md") if p.resolve() not in linked] == []
