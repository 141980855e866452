"""Getting a verified copy of an entry's file: the copy shipped in the package, the Hugging
Face cache, ``hf_hub_download`` at the pinned commit, the mirror URL (into NormZoo's cache,
one process at a time per file, under a lock file beside it). A file is used only if its
sha256 is the manifest's."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional

from ..cli import one_line
from ..progress import hub_progress_bars, progress_bar
from .errors import WeightsError
from .files import sha256sum, temp_beside
from .manifest import UNPUBLISHED

if TYPE_CHECKING:
    from .api import Weights

_log = logging.getLogger("zoo")


def cache_dir() -> Path:
    """NormZoo's own download cache (mirror downloads): ``$NORMZOO_CACHE`` or ~/.cache/normzoo."""
    root = os.environ.get("NORMZOO_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "normzoo"
    return Path(root)


def fetch_file(w: Weights, progress: bool) -> Path:
    """A verified local path of the weights' file: the shipped copy, the Hugging Face cache or
    Hub, or the mirror, in that order; WeightsError saying what was tried and how to fix it."""
    e = w.entry
    tried: list[str] = []

    if e["shipped"]:
        shipped = w.manifest_dir / e["shipped"]
        if shipped.is_file() and _verified(shipped, e, tried, "shipped copy"):
            _log.info("%s: the copy shipped with NormZoo, %s (sha256 verified)", w.name, shipped)
            return shipped
        if not shipped.is_file():
            tried.append(f"shipped copy {shipped}: missing")

    published = e["revision"] != UNPUBLISHED
    if published:
        path = _from_hub(w, progress, tried)
        if path is not None:
            return path
    else:
        tried.append("Hugging Face Hub: not published yet (revision 'unpublished')")

    if e["mirror_url"]:
        path = _from_mirror(w, progress, tried)
        if path is not None:
            return path
    raise WeightsError(
        f"could not get a verified copy of {w.name}:\n  " + "\n  ".join(tried) + "\n"
        + _how_to_fetch(w))


def _how_to_fetch(w: Weights) -> str:
    from huggingface_hub import constants

    e = w.entry
    reinstall = (" A shipped copy that fails its check was damaged: reinstall NormZoo or restore "
                 "the file from git." if e["shipped"] else "")
    if e["revision"] == UNPUBLISHED and not e["mirror_url"]:
        return (f"It is not published anywhere yet; pass a local copy with "
                f"weights='path/to/{w.name}.safetensors'.{reinstall}")
    ways = []
    if e["revision"] != UNPUBLISHED:
        ways.append(f"on a connected machine run `hf download {e['hub_repo_id']} {e['filename']} "
                    f"--revision {e['revision']}` and copy the Hugging Face cache (HF_HOME) here"
                    + (", or unset HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else ""))
    if e["mirror_url"]:
        ways.append(f"download {e['mirror_url']}")
    return ("To fix: " + "; or ".join(ways) + f"; or pass the file itself with "
            f"weights='path/to/{e['filename']}' (expected sha256 {e['sha256']}).{reinstall}")


def _verified(path: Path, entry: Mapping, tried: list[str], what: str) -> bool:
    """Whether ``path`` holds the entry's bytes; a mismatch is noted in ``tried``."""
    try:
        actual = sha256sum(path)
    except FileNotFoundError:  # absent, or removed meanwhile by another process
        return False
    if actual == entry["sha256"]:
        return True
    tried.append(f"{what} {path}: sha256 {actual[:16]}... is not the manifest's "
                 f"{entry['sha256'][:16]}... (corrupt, truncated or tampered)")
    return False


def _from_hub(w: Weights, progress: bool, tried: list[str]) -> Optional[Path]:
    from huggingface_hub import constants, try_to_load_from_cache

    e = w.entry
    where = f"Hugging Face Hub {e['hub_repo_id']}@{e['revision'][:12]}"
    try:
        cached = try_to_load_from_cache(e["hub_repo_id"], e["filename"], revision=e["revision"])
    except Exception as err:  # huggingface_hub's checks of the repo id and filename, or the cache
        tried.append(f"{where}: {one_line(err, 500)}")
        return None
    if isinstance(cached, str):
        if _verified(Path(cached), e, tried, "Hugging Face cache file"):
            _log.info("%s: the Hugging Face cache, %s (sha256 verified)", w.name, cached)
            return Path(cached)
        if not _remove_hub_file(Path(cached), e["hub_repo_id"], tried):
            return None  # hf_hub_download would hand back the same bad file
    if constants.HF_HUB_OFFLINE:
        tried.append(f"{where}: not in the cache and HF_HUB_OFFLINE is set")
        return None
    for _ in range(2):  # a bad download is removed and tried once more
        try:
            path = hub_download(e["hub_repo_id"], e["filename"], e["revision"], progress)
        except Exception as err:  # HTTP, connection (httpx or requests) and cache errors alike
            tried.append(f"{where}: {one_line(err, 500)}")
            return None
        if _verified(path, e, tried, "downloaded file"):
            _log.info("%s: downloaded from the Hugging Face Hub, %s@%s, to %s (sha256 "
                      "verified)", w.name, e["hub_repo_id"], e["revision"][:12], path)
            return path
        if not _remove_hub_file(path, e["hub_repo_id"], tried):
            return None
    return None


def hub_download(repo_id: str, filename: str, revision: Optional[str], progress: bool) -> Path:
    """``hf_hub_download`` of one file (the Hugging Face cache serves it offline), with
    huggingface_hub's progress bars on or off; its errors pass through."""
    from huggingface_hub import hf_hub_download

    with hub_progress_bars(progress):
        return Path(hf_hub_download(repo_id, filename, revision=revision, library_name="normzoo"))


def _remove_hub_file(pointer: Path, repo_id: str, tried: list[str]) -> bool:
    """Remove a bad cached Hub file: the snapshot pointer, and the blob it points to if that
    is one of the repo's blobs in the cache (a pointer edited to name a file elsewhere, a
    user's own, leaves that file alone). False, with the reason and the fix in ``tried``,
    where the cache is read-only."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    blobs = Path(constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type="model"),
                 "blobs").resolve()
    blob = pointer.resolve()
    try:
        pointer.unlink(missing_ok=True)
        if blob.parent == blobs:
            blob.unlink(missing_ok=True)
    except OSError as err:  # PermissionError, or a read-only file system
        tried.append(f"Hugging Face cache file {pointer}: cannot remove this bad copy "
                     f"({_os_reason(err)}); make the Hugging Face cache writable, or set "
                     f"HF_HOME to a writable folder")
        return False
    return True


def _from_mirror(w: Weights, progress: bool, tried: list[str]) -> Optional[Path]:
    import requests
    from filelock import FileLock

    e = w.entry
    target = cache_dir() / "weights" / f"{w.name}-{e['sha256'][:16]}.safetensors"
    try:
        # A good copy is never removed or replaced, so using one needs no lock (and works in a
        # read-only cache).
        if _verified(target, e, tried, "mirror cache file"):
            _log.info("%s: NormZoo's mirror cache, %s (sha256 verified)", w.name, target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # One process at a time removes a bad copy and downloads. It checks again under the
        # lock, as the process before it may have done just that.
        with FileLock(f"{target}.lock"):
            if _verified(target, e, [], "mirror cache file"):  # a bad copy is noted already
                _log.info("%s: NormZoo's mirror cache, %s, as another process downloaded it "
                          "(sha256 verified)", w.name, target)
                return target
            target.unlink(missing_ok=True)
            return _download(w, target, progress, tried)
    except requests.RequestException as err:  # caught first: requests' errors are OSErrors
        tried.append(f"mirror {e['mirror_url']}: {one_line(err, 500)}")
    except OSError as err:  # a read-only cache or file system, a full disk
        tried.append(f"NormZoo cache {cache_dir()}: {_os_reason(err)}; make it writable, or set "
                     f"NORMZOO_CACHE to a writable folder")
    return None


def _download(w: Weights, target: Path, progress: bool, tried: list[str]) -> Optional[Path]:
    """Stream the entry's mirror URL into ``target`` (write, verify, rename); a bad download
    is tried once more, one larger than the entry's ``size_bytes`` is stopped there."""
    import requests

    url, size = w.entry["mirror_url"], w.entry["size_bytes"]
    for _ in range(2):
        fd, tmp = temp_beside(target)
        try:
            with os.fdopen(fd, "wb") as out, requests.get(url, stream=True, timeout=30) as r:
                r.raise_for_status()
                length = r.headers.get("Content-Length", "")
                encoded = r.headers.get("Content-Encoding")  # then the length is the encoded one
                if length.isdigit() and int(length) > size and not encoded:
                    tried.append(f"mirror {url}: serves {int(length)} bytes, but the file has "
                                 f"{size}; not downloading it (wrong file or wrong mirror_url)")
                    return None
                received = 0
                with progress_bar(size, f"{w.name} (mirror)", unit="B", unit_scale=True,
                                  leave=True, enabled=progress) as bar:
                    for chunk in r.iter_content(1 << 20):
                        received += len(chunk)
                        if received > size:
                            tried.append(f"mirror {url}: sent more than the file's {size} bytes; "
                                         f"stopped there (wrong file or wrong mirror_url)")
                            return None
                        out.write(chunk)
                        bar.update(len(chunk))
            if _verified(tmp, w.entry, tried, f"mirror download {url}"):
                os.replace(tmp, target)
                _log.info("%s: downloaded from the mirror %s to %s (sha256 verified)", w.name,
                          url, target)
                return target
        finally:
            tmp.unlink(missing_ok=True)
    return None


def _os_reason(err: OSError) -> str:
    return f"{err.strerror}: {err.filename}" if err.strerror and err.filename else one_line(err, 500)
