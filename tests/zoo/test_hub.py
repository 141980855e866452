"""torch.hub entry points, each check in a fresh Python process as a hub user would have.

torch.hub.list/help only take GitHub repos, so the checkout is placed in a temporary hub
cache as the downloaded copy of `normzoo/normzoo:main` (the cache is used as-is, offline).
"""

import ast
import importlib
import json
import subprocess
import sys
import textwrap

import zoo

from conftest import REPO


def _run(code, cwd):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_hub_list_help_and_load(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "normzoo_normzoo_main").symlink_to(REPO, target_is_directory=True)
    result = _run(f"""
        import importlib.util, json, sys, torch
        torch.hub.set_dir({str(hub)!r})
        repo = "normzoo/normzoo:main"
        names = torch.hub.list(repo, trust_repo=True, verbose=False)
        # torch.hub.help re-imports hubconf on every call: ask it for a few names, and read
        # every entry point's docstring from one import of the same hubconf
        helped = {{n: torch.hub.help(repo, n, trust_repo=True) for n in ("resnet20_gn", "resnet50")}}
        spec = importlib.util.spec_from_file_location("hubconf", {str(REPO / "hubconf.py")!r})
        hubconf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(hubconf)
        docs = {{n: getattr(hubconf, n).__doc__ for n in names}}
        assert all(helped[n] == docs[n] for n in helped), "torch.hub.help differs from __doc__"
        resnet = torch.hub.load({str(REPO)!r}, "resnet50_gn", source="local")
        cifar = torch.hub.load({str(REPO)!r}, "resnet20", source="local", num_classes=100)
        shape = list(resnet(torch.randn(1, 3, 64, 64)).shape)
        print(json.dumps(dict(names=names, docs=docs, resnet=resnet.config, cifar=cifar.config,
                              shape=shape, modules=[m for m in ("train", "eval") if m in sys.modules])))
    """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(out["names"]) == sorted(zoo.list_models() + zoo.list_archs())
    assert all("Input: (N, 3, H, W)" in doc for doc in out["docs"].values())
    doc = out["docs"]["resnet20_gn"]
    assert "CIFAR ResNet-20 with Group Normalization" in doc
    assert "GroupNorm(min(32, C // 2), C)" in doc and "H, W >= 32" in doc
    assert (out["resnet"]["name"], out["resnet"]["num_classes"]) == ("resnet50_gn", 1000)
    assert (out["cifar"]["name"], out["cifar"]["num_classes"]) == ("resnet20_bn", 100)
    assert out["shape"] == [1, 1000]
    assert out["modules"] == []  # hubconf imports zoo only, never train/ or eval/


def test_hubconf_declares_importable_dependencies():
    tree = ast.parse((REPO / "hubconf.py").read_text())
    declared = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and [t.id for t in node.targets] == ["dependencies"])
    assert declared[0] == "torch"
    for module in declared:
        importlib.import_module(module)


def test_a_foreign_zoo_module_is_refused(tmp_path):
    result = _run(f"""
        import sys, types, torch
        foreign = types.ModuleType("zoo")
        foreign.__file__ = "/somewhere/site-packages/zoo/__init__.py"
        sys.modules["zoo"] = foreign
        torch.hub.load({str(REPO)!r}, "resnet20_bn", source="local")
    """, cwd=tmp_path)
    assert result.returncode != 0
    assert "a different module named 'zoo' is already imported from /somewhere/site-packages/zoo" \
        in result.stderr
