import os
import re
import subprocess
import sys

import pytest

import zoo
from conftest import REPO


def test_generated_readme_sections_are_up_to_date():
    result = subprocess.run([sys.executable, "tools/update_readme.py", "--check"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


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
from hub_server import FakeHub  # tests/ is on PYTHONPATH
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
    prelude = BLOCK_PRELUDE.format(ilm=str(ilm))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "NORMZOO_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", prelude + code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
