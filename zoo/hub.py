"""Manifest and Hugging Face Hub tools: ``python -m zoo.hub {register,build,publish,check}``.

    (``$NORMZOO_MANIFEST`` picks another manifest than the package's.)

    register FILE   add or refresh a manifest entry from a checkpoint written by
                    ``zoo.weights.save_checkpoint`` (figures are computed, never typed)
    build NAME      the Hub-ready folder: model.safetensors, config.json, README.md
    publish NAME    build, upload in one commit, tag it, and pin the commit in the manifest
    publish --checkpoint FILE --repo-id ID
                    the same for your own checkpoint (zoo.hub.push_to_hub), no manifest
    check           every entry's file: sha256, size, strict load, num_params, GMACs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
from huggingface_hub import HfApi, get_session, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from torch import nn

try:  # huggingface_hub >= 1.0 passes its HTTP client's connection errors through unwrapped
    from httpx2 import HTTPError as _ClientError, Timeout, TimeoutException
except ImportError:  # before 1.0 they were requests' errors, which are OSErrors
    _ClientError, Timeout, TimeoutException = OSError, None, None

from .cli import first_line
from .weights import (HUB_FILENAME, METRICS_KEYS, RECIPE_KEYS, UNPUBLISHED, ManifestEntry,
                      Weights, WeightsError, get_weight, load_manifest, manifest_lock,
                      manifest_path, read_metadata, save_checkpoint, sha256sum, write_manifest)
from .weights.files import temp_beside

DEFAULT_ORG = "normzoo"
# Seconds publish waits for the Hub to answer (each connect, read or write, not the whole
# upload); huggingface_hub's own client waits forever.
HUB_TIMEOUT_S = 60.0
GITHUB_REPO = "org/normzoo"
LICENSE = "mit"


def count_gmacs(model: nn.Module, input_size) -> float:
    """Multiply-adds per image in units of 1e9 (``FlopCounterMode`` counts 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_size))
    model.train(was_training)
    return round(counter.get_total_flops() / 2 / 1e9, 4)


def _loaded_model(path: Path) -> nn.Module:
    from .registry import create_model

    meta = read_metadata(path)
    if "model" not in meta:
        raise WeightsError(f"{path} has no NormZoo metadata; write it with "
                           f"zoo.weights.save_checkpoint")
    return create_model(meta["model"], weights=path, progress=False)


def make_entry(path: Union[str, Path], *, hub_repo_id: Optional[str] = None,
               mirror_url: Optional[str] = None, previous: Optional[dict] = None,
               measured: bool = True) -> dict:
    """A manifest entry for a checkpoint file; every figure is computed from the file.

    ``measured=False`` (a user's own checkpoint, never a manifest entry): metrics and the
    recipe may be missing; they are then ``{}`` and unknown.
    """
    from .norms import get_norm

    path = Path(path)
    meta = read_metadata(path)
    missing = [k for k in ("name", "model", "tag", "preprocessing") if k not in meta]
    if missing:
        raise WeightsError(f"{path} lacks NormZoo's metadata ({', '.join(missing)}); save it with "
                           f"zoo.save_checkpoint or convert it with python -m zoo.convert")
    has_metrics = set(METRICS_KEYS) <= set(meta.get("metrics", {}))
    if measured and (not has_metrics or not {"command", "commit"} <= set(meta.get("recipe", {}))):
        raise WeightsError(f"{path} lacks what a published checkpoint records (metrics "
                           f"top1/top5/split/num_images and recipe command/commit); save it with "
                           f"save_checkpoint(..., metrics=..., recipe=...)")
    model = _loaded_model(path)
    sha = sha256sum(path)
    republished = previous is not None and previous["sha256"] == sha
    return ManifestEntry(
        name=meta["name"],
        model=meta["model"],
        architecture=meta["architecture"],
        norm=meta["norm"],
        tag=meta["tag"],
        norm_kwargs=meta["norm_kwargs"],
        model_kwargs=meta["model_kwargs"],
        dataset=meta["dataset"],
        num_classes=meta["num_classes"],
        categories=meta["categories"],
        hub_repo_id=hub_repo_id or (previous or {}).get("hub_repo_id") or f"{DEFAULT_ORG}/{meta['name']}",
        filename=HUB_FILENAME,
        revision=previous["revision"] if republished else UNPUBLISHED,
        mirror_url=mirror_url or (previous or {}).get("mirror_url"),
        shipped=None,
        sha256=sha,
        size_bytes=path.stat().st_size,
        num_params=sum(p.numel() for p in model.parameters()),
        gmacs=count_gmacs(model, meta["preprocessing"]["input_size"]),
        preprocessing=meta["preprocessing"],
        metrics={k: meta["metrics"][k] for k in METRICS_KEYS} if has_metrics else {},
        recipe={k: meta.get("recipe", {}).get(k) for k in RECIPE_KEYS},
        license=LICENSE,
        paper=get_norm(meta["norm"]).paper,
        default=False,
        notes=(previous or {}).get("notes") if republished else None,
    ).to_dict()


def local_weights(path: Union[str, Path], *, measured: bool = True) -> Weights:
    """A checkpoint file that is in no manifest, as a Weights (for ``build_folder``);
    ``measured=False`` accepts one without metrics or recipe (see ``make_entry``)."""
    path = Path(path)
    entry = make_entry(path, measured=measured)
    entry["shipped"] = path.name  # fetch() finds and verifies it next to itself
    return Weights(entry, path.parent)


def register(path: Union[str, Path], *, default: bool = False, ship: bool = False,
             hub_repo_id: Optional[str] = None, mirror_url: Optional[str] = None,
             tag: Optional[str] = None) -> dict:
    """Add the checkpoint's manifest entry, or update it for the same file (its Hub repo or
    mirror); other weights under a registered name are refused. ``ship`` copies it into the
    package. ``tag`` registers a copy under that weights tag (an extra seed, say), which
    ``ship`` must keep.

    The first weights of a model become its default; ``default=True`` moves the default.
    Nothing is written before the entry is valid; registers in other processes wait for the
    manifest's lock and keep each other's entries; a shipped copy replaces the old one only
    once the manifest that pins it is written.
    """
    if tag is not None:
        if not ship:
            raise WeightsError(f"registering under another tag ({tag!r}) writes a copy of {path}, "
                               f"which only --ship keeps in the package: add --ship")
        with tempfile.TemporaryDirectory() as tmp:
            return register(_retagged(path, tag, Path(tmp)), default=default, ship=True,
                            hub_repo_id=hub_repo_id, mirror_url=mirror_url)
    manifest_file = manifest_path()
    name = read_metadata(path).get("name")
    previous = _entry_named(load_manifest(manifest_file), name)
    entry = make_entry(path, hub_repo_id=hub_repo_id, mirror_url=mirror_url, previous=previous)
    shipped = Path("pretrained") / f"{entry['name']}.safetensors"
    if ship:
        entry["shipped"] = shipped.as_posix()
    problems = ManifestEntry.problems(entry)
    if problems:
        raise WeightsError(f"{path} cannot be registered: {'; '.join(problems)}. Save it again "
                           f"with zoo.save_checkpoint")
    _check_same_weights(previous, entry, path)
    with manifest_lock(manifest_file):
        data = load_manifest(manifest_file)  # again: another register may have written since
        current = _entry_named(data, name)
        if current != previous:  # its revision or mirror may have changed meanwhile
            _check_same_weights(current, entry, path)
            entry = dict(make_entry(path, hub_repo_id=hub_repo_id, mirror_url=mirror_url,
                                    previous=current), shipped=entry["shipped"])
        same_model = [e for e in data["weights"] if e["model"] == entry["model"] and e["name"] != name]
        entry["default"] = default or (current or {}).get("default", False) or not same_model
        if entry["default"]:
            for e in same_model:
                e["default"] = False
        if current is not None:
            data["weights"][data["weights"].index(current)] = entry  # keeps its place: pretrained=True is pinned
        else:
            data["weights"].append(entry)
        target = manifest_file.parent / shipped
        if not ship or Path(path).resolve() == target.resolve():
            write_manifest(data, manifest_file)
            return entry
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_beside(target)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out)
            write_manifest(data, manifest_file)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return entry


def _retagged(path: Union[str, Path], tag: str, folder: Path) -> Path:
    """``path``'s weights and record (data, preprocessing, metrics, recipe) saved in ``folder``
    under weights tag ``tag``."""
    from .registry import create_model

    meta = read_metadata(path)
    if "model" not in meta:
        raise WeightsError(f"{path} records no model name: save it with zoo.save_checkpoint")
    model = create_model(meta["model"], weights=str(path))
    return save_checkpoint(model, folder / f"{meta['model']}.{tag}.safetensors", tag=tag,
                           dataset=meta.get("dataset"), categories=meta.get("categories"),
                           preprocessing=meta.get("preprocessing"), metrics=meta.get("metrics"),
                           recipe=meta.get("recipe"))


def _check_same_weights(registered: Optional[dict], entry: dict, path) -> None:
    """A name already in the manifest is registered again only for the same file (a new
    mirror, say): a weights tag never changes meaning."""
    if registered is not None and registered["sha256"] != entry["sha256"]:
        raise WeightsError(
            f"{entry['name']} already names other weights (sha256 {registered['sha256'][:12]}..., "
            f"{path} has {entry['sha256'][:12]}...), and a weights tag never changes meaning: "
            f"save the new weights under a new tag (python -m train ... --tag NEW, or "
            f"zoo.save_checkpoint(..., tag=NEW))")


def _entry_named(manifest: dict, name: Optional[str]) -> Optional[dict]:
    return next((e for e in manifest["weights"] if e["name"] == name), None)


def check_files() -> list[str]:
    """Problems with the files behind the manifest's entries (empty when all match).

    Recomputes sha256, size, num_params and GMACs from each entry's file (shipped copy,
    cache or download) and loads it strictly into its model.
    """
    manifest_file = manifest_path()
    problems = []
    for entry in load_manifest(manifest_file)["weights"]:
        w = Weights(entry, manifest_file.parent)
        try:
            path = w.fetch(progress=False)
        except WeightsError as e:
            problems.append(f"{w.name}: {e}")
            continue
        fresh = make_entry(path, previous=entry)
        for key in ("sha256", "size_bytes", "num_params", "gmacs", "name", "num_classes"):
            if fresh[key] != entry[key]:
                problems.append(f"{w.name}: {key} is {entry[key]!r} in the manifest but "
                                f"{fresh[key]!r} in {path}")
    return problems


# ---------------------------------------------------------------------------------------------
# The Hub-ready folder and publishing


def build_folder(weights: Union[str, Weights], out: Union[str, Path], *, progress: bool = True) -> Path:
    """``out/`` with model.safetensors (verified), config.json and a README.md model card,
    for a manifest name or a :class:`Weights` (``local_weights(path)`` for an unregistered file)."""
    w = get_weight(weights) if isinstance(weights, str) else weights
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WeightsError(f"{out} is a file; build into a folder (it is created if missing)")
    files = (HUB_FILENAME, "config.json", "README.md")
    others = sorted(p.name for p in out.iterdir() if p.name not in files) if out.is_dir() else []
    if others:  # publish uploads the whole folder: nothing else may ride along
        raise WeightsError(f"{out} holds other files ({', '.join(others[:5])}); build into an "
                           f"empty folder")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(w.fetch(progress=progress), out / HUB_FILENAME)
    (out / "config.json").write_text(json.dumps(hub_config(w), indent=2) + "\n")
    (out / "README.md").write_text(model_card(w))
    return out


def hub_config(w: Weights) -> dict:
    e = w.entry
    return {
        "library": "normzoo",
        "weights": e["name"],
        "model": e["model"],
        "architecture": e["architecture"],
        "norm": e["norm"],
        "norm_kwargs": e["norm_kwargs"],
        "model_kwargs": e["model_kwargs"],
        "num_classes": e["num_classes"],
        "preprocessing": e["preprocessing"],
        "categories": e["categories"],
        "label_names": w.meta["categories"],
        "sha256": e["sha256"],
    }


def model_card(w: Weights) -> str:
    """The Hub model card: huggingface_hub's ModelCardData front matter, with a model-index
    of the measured figures (``ModelCard.load(...).data.eval_results``), then usage, metrics,
    recipe and references."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from .norms import get_norm
    from .registry import get_arch

    e, m, p = w.entry, w.entry["metrics"], w.entry["preprocessing"]
    arxiv = re.findall(r"arXiv:(\d{4}\.\d{4,5})", e["paper"] or "")
    results = [EvalResult(task_type="image-classification", dataset_type=e["dataset"],
                          dataset_name=e["dataset"], dataset_split=m["split"],
                          metric_type="accuracy", metric_name=f"top-{k} accuracy",
                          metric_value=m[f"top{k}"]) for k in (1, 5)] if m else None
    data = ModelCardData(
        model_name=e["name"], library_name="pytorch", license=e["license"],
        pipeline_tag="image-classification", datasets=[e["dataset"]], metrics=["accuracy"],
        tags=["image-classification", "normzoo", e["norm"], e["architecture"],
              *(f"arxiv:{a}" for a in arxiv)],
        eval_results=results)
    if m:
        metrics = (f"| split | images | top-1 (%) | top-5 (%) |\n|---|---|---|---|\n"
                   f"| {m['split']} | {m['num_images']} | {m['top1']} | {m['top5']} |")
    else:
        metrics = "No metrics were measured for this checkpoint: its metadata records none."
    r = e["recipe"]
    recipe = (f"```sh\n{r['command']}\n```\nat commit `{r['commit']}`." if r["command"]
              else "Not recorded in the checkpoint.")
    papers = "".join(f"\n- https://arxiv.org/abs/{a}" for a in arxiv)
    notes = f"## Notes\n\n{e['notes']}\n\n" if e.get("notes") else ""
    hub_ref = f"hf-hub:{e['hub_repo_id']}"
    if any(x["sha256"] == e["sha256"] for x in load_manifest()["weights"]):  # NormZoo's own
        usage = f"""import torch
model = torch.hub.load("{GITHUB_REPO}", "{e['model']}", weights="{e['tag']}").eval()

# or, with NormZoo installed (pip install git+https://github.com/{GITHUB_REPO}):
import zoo
model = zoo.create_model("{e['model']}", weights="{e['tag']}").eval()
preprocess = zoo.get_weight("{e['name']}").transforms()  # PIL image or uint8 tensor -> input"""
    else:
        usage = f"""# pip install git+https://github.com/{GITHUB_REPO}
import zoo
model = zoo.create_model("{e['model']}", weights="{hub_ref}").eval()
preprocess = zoo.preprocessing.eval_transforms(model.config["preprocessing"])  # PIL/uint8 -> input"""
    body = f"""
# {e['name']}

`{e['model']}` from [NormZoo](https://github.com/{GITHUB_REPO}): {get_arch(e['architecture']).title}
with {get_norm(e['norm']).title} (`{e['norm']}`), trained on {e['dataset']} ({e['num_classes']} classes).

## Usage

```python
{usage}
```

## Metrics

{metrics}

Parameters: {e['num_params']:,}; GMACs per image at {p['input_size'][1]}x{p['input_size'][2]}: {e['gmacs']}.
Preprocessing: resize {p['resize'] or 'none'}, center crop {p['crop']}, {p['interpolation']},
mean {p['mean']}, std {p['std']}.

{notes}## Recipe

{recipe}

## Citation

{e['paper'] or 'See the NormZoo README for the method and architecture references.'}{papers}

File sha256: `{e['sha256']}`.
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def publish(name: str, repo_id: Optional[str] = None, *, out: Union[str, Path, None] = None,
            dry_run: bool = False) -> dict:
    """Build the folder, upload it in one commit, tag it and pin the commit in the manifest.

    Returns ``{"folder", "repo_id", "revision"}``: revision None for a dry run; folder None
    when it was built in a temporary folder for the upload (removed afterwards).
    """
    w = get_weight(name)
    repo_id = _checked_repo_id(repo_id or w.entry["hub_repo_id"])
    if dry_run:  # the folder is the result: kept, in a new temporary folder unless out is given
        scratch = None if out is not None else Path(tempfile.mkdtemp(prefix="normzoo-hub-"))
        try:
            folder = build_folder(name, out if scratch is None else scratch / name)
        except BaseException:
            if scratch is not None:
                shutil.rmtree(scratch)
            raise
        return {"folder": folder, "repo_id": repo_id, "revision": None}
    token = _token()
    if out is not None:
        folder = build_folder(name, out)
        revision = _upload(w, folder, repo_id, token)
    else:
        folder = None  # built for the upload only: removed, whether it succeeds or not
        with tempfile.TemporaryDirectory(prefix="normzoo-hub-") as scratch:
            revision = _upload(w, build_folder(name, Path(scratch) / name), repo_id, token)
    manifest_file = manifest_path()
    data = load_manifest(manifest_file)
    for entry in data["weights"]:
        if entry["name"] == name:
            entry["hub_repo_id"], entry["revision"] = repo_id, revision
    write_manifest(data, manifest_file)
    return {"folder": folder, "repo_id": repo_id, "revision": revision}


def push_to_hub(model_or_checkpoint: Union[nn.Module, str, Path], repo_id: str, *,
                tag: str = "custom", private: bool = False, dry_run: bool = False,
                out: Union[str, Path, None] = None) -> dict:
    """Publish your own zoo model or checkpoint file (a fine-tune, say) to ``repo_id``.

    The repo gets model.safetensors, config.json and a model card, in one commit, tagged.
    The card's metrics come from the checkpoint's metadata (``save_checkpoint(...,
    metrics=...)``), or it says none were measured. The token comes from huggingface_hub's
    usual places (``HF_TOKEN``, ``hf auth login``). Load it back with
    ``create_model(name, weights="hf-hub:<repo_id>")``. ``dry_run`` builds the folder
    (into ``out``, else a temporary folder) without uploading. Returns ``{"folder",
    "repo_id", "revision"}`` as :func:`publish` does; the manifest is not touched.
    """
    from .weights import checkpoint_file, save_checkpoint

    repo_id = _checked_repo_id(repo_id)
    token = None if dry_run else _token()
    scratch = Path(tempfile.mkdtemp(prefix="normzoo-hub-"))
    try:
        if isinstance(model_or_checkpoint, nn.Module):
            path = save_checkpoint(model_or_checkpoint, scratch / "checkpoint" / HUB_FILENAME,
                                   tag=tag)
        else:
            path = checkpoint_file(model_or_checkpoint)
        w = local_weights(path, measured=False)
        w.entry["hub_repo_id"] = repo_id
        folder = build_folder(w, Path(out) if out is not None else scratch / "hub",
                              progress=False)
        if dry_run:
            return {"folder": folder, "repo_id": repo_id, "revision": None}
        return {"folder": folder if out is not None else None, "repo_id": repo_id,
                "revision": _upload(w, folder, repo_id, token, private=private)}
    finally:
        if not (dry_run and out is None):  # a dry run's temporary folder is its result
            shutil.rmtree(scratch, ignore_errors=True)


def _checked_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise WeightsError(f"{repo_id!r} is not a Hub repo id ('owner/name'): {e}") from None
    return repo_id


def _token() -> str:
    token = get_token()
    if not token:
        raise WeightsError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then "
                           "publish again (--dry-run builds the folder without one)")
    return token


def _upload(w: Weights, folder: Path, repo_id: str, token: str, private: bool = False) -> str:
    """Create the repo if needed, upload ``folder`` in one commit and tag it; the commit id."""
    api = HfApi(token=token)
    session = get_session()  # huggingface_hub's shared client: its timeout, for this upload only
    no_timeout = session.timeout if Timeout is not None else None
    if Timeout is not None:
        session.timeout = Timeout(HUB_TIMEOUT_S)
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True,
                        **({"private": True} if private else {}))
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message=f"NormZoo {w.name} (sha256 "
                                                  f"{w.entry['sha256'][:16]})")
        api.create_tag(repo_id, tag=f"{w.tag}-{w.entry['sha256'][:8]}", revision=commit.oid,
                       repo_type="model", exist_ok=True)
    except (OSError, _ClientError, json.JSONDecodeError) as e:  # HfHubHTTPError is both of the first
        if TimeoutException is not None and isinstance(e, TimeoutException):
            reason = f"no answer in {HUB_TIMEOUT_S:g} s"
        elif isinstance(e, json.JSONDecodeError):
            reason = "it answered with something that is not JSON (is HF_ENDPOINT the Hub's API?)"
        else:
            reason = (first_line(e) or type(e).__name__).rstrip(".")
        raise WeightsError(
            f"could not publish {w.name} to {repo_id} on {api.endpoint}: {reason}. The manifest "
            f"is unchanged; check the network, HF_ENDPOINT and that the token may write to "
            f"{repo_id} (`hf auth whoami`), then publish again") from None
    finally:
        if Timeout is not None:
            session.timeout = no_timeout
    return commit.oid


def _stop(signum, frame):
    """SIGTERM ends the command as Ctrl-C would: the temporary folders' cleanup runs."""
    print(f"error: stopped by {signal.Signals(signum).name}; run the command again to finish it",
          file=sys.stderr)
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("register", help="add or refresh a manifest entry from a checkpoint")
    p.add_argument("file")
    p.add_argument("--default", action="store_true", help="make it the model's weights='DEFAULT'")
    p.add_argument("--ship", action="store_true", help="copy it into the package (small files)")
    p.add_argument("--repo-id", help=f"Hub repo (default: {DEFAULT_ORG}/<name>)")
    p.add_argument("--mirror-url")
    p.add_argument("--tag", help="register a copy under this weights tag (with --ship): an extra "
                                 "seed, e.g. cifar10_long_s1")
    p = sub.add_parser("build", help="build the Hub-ready folder")
    p.add_argument("name")
    p.add_argument("--out", required=True)
    p = sub.add_parser("publish", help="upload to the Hub and pin the commit in the manifest; "
                                         "or, with --checkpoint, publish your own file")
    p.add_argument("name", nargs="?", help="a manifest name, e.g. resnet20_bn.cifar10")
    p.add_argument("--checkpoint", help="your own checkpoint file instead (needs --repo-id; "
                                        "the manifest is not touched)")
    p.add_argument("--repo-id")
    p.add_argument("--private", action="store_true", help="with --checkpoint: a private repo")
    p.add_argument("--out", help="where to build the folder (default: a temporary folder)")
    p.add_argument("--dry-run", action="store_true", help="build the folder only")
    sub.add_parser("check", help="recompute every entry's file figures")
    args = parser.parse_args(argv)

    on_sigterm = signal.signal(signal.SIGTERM, _stop)
    try:
        if args.command == "register":
            e = register(args.file, default=args.default, ship=args.ship, hub_repo_id=args.repo_id,
                         mirror_url=args.mirror_url, tag=args.tag)
            print(f"registered {e['name']}: sha256 {e['sha256'][:16]}..., {e['size_bytes']} bytes, "
                  f"{e['num_params']:,} params, {e['gmacs']} GMACs, top-1 {e['metrics']['top1']} on "
                  f"{e['metrics']['split']}{', default' if e['default'] else ''}"
                  f"{', shipped' if e['shipped'] else ''}")
        elif args.command == "build":
            print(build_folder(args.name, args.out))
        elif args.command == "publish":
            if (args.name is None) == (args.checkpoint is None):
                parser.error("publish takes a manifest name or --checkpoint FILE (one of them)")
            if args.checkpoint:
                if not args.repo_id:
                    parser.error("publish --checkpoint needs --repo-id owner/name")
                r = push_to_hub(args.checkpoint, args.repo_id, private=args.private,
                                dry_run=args.dry_run, out=args.out)
            else:
                r = publish(args.name, args.repo_id, out=args.out, dry_run=args.dry_run)
            built = [f"built {r['folder']}"] if r["folder"] else []
            published = [] if args.dry_run else [
                f"published {r['repo_id']}@{r['revision']}" + ("" if args.checkpoint else
                                                               " and pinned it in the manifest")]
            print("; ".join(built + published))
        else:
            problems = check_files()
            print("\n".join(problems) or f"all {len(load_manifest()['weights'])} "
                                          f"entries match their files")
            return 1 if problems else 0
    except (WeightsError, OSError) as e:  # OSError: a path that cannot be read or written
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
