import os
import re
import shutil
import subprocess
import sys

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


# What the README's Python blocks leave to the reader, made real: an input, a data loader, the
# files and the Hub they point at (the loopback stand-in, which push_to_hub's uploads reach).
BLOCK_PRELUDE = """
import os, sys, tempfile
sys.path.insert(0, {tests!r})
from hub_server import FakeHub
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


@pytest.mark.parametrize("section", ["Use", "Pretrained weights", "Training", "Methods",
                                     "Adding a norm"])
def test_readme_python_blocks_run(section, tmp_path):
    text = (REPO / "README.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    ilm = zoo.get_weight("resnet20_ilm.cifar10").fetch(progress=False)
    code = "\n".join(blocks).replace("path/to/normzoo", str(REPO)).replace(
        "path/to/model.safetensors", str(ilm))
    prelude = BLOCK_PRELUDE.format(tests=str(REPO / "tests"), ilm=str(ilm))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "NORMZOO_"))}
    result = subprocess.run([sys.executable, "-c", prelude + code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
