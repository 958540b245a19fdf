"""Hugging Face hub ids as model sources: ``owner/name`` (optionally ``owner/name@revision``) resolved to its local
snapshot folder by huggingface_hub, downloading only what edgetl reads (config, safetensors weights, tokenizer and
image processor files: never pickled ``.bin`` weights).

Offline (``HF_HUB_OFFLINE=1``) or when the hub cannot be reached, the id resolves from the local cache alone
(``HF_HUB_CACHE``, ``HF_HOME``); a run records the id and the snapshot's commit (``hub_origin``).

>>> locate_hub_id("google/vit-base-patch16-224")
PosixPath('~/.cache/huggingface/hub/models--google--vit-base-patch16-224/snapshots/3f49326...')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import RecipeError

# What edgetl reads from a Hugging Face folder, and copies into a run: config and processor settings, safetensors
# weights, tokenizer (vocab / sentencepiece); as snapshot_download patterns ("*" matches sub-folders too)
FOLDER_SUFFIXES = (".json", ".safetensors", ".txt", ".model")
DOWNLOADED = [f"*{suffix}" for suffix in FOLDER_SUFFIXES]
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]+))?")
# A missing local file is not a hub id: names with these suffixes are paths with a typo
_FILE_SUFFIXES = {".onnx", ".xml", ".pt2", ".pt", ".pth", ".bin", ".safetensors", ".json", ".txt", ".csv", ".tsv",
                  ".jsonl", ".zip", ".gz", ".tar", ".tgz"}
_COMMIT = re.compile(r"[0-9a-f]{40}")


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``spec`` reads as a hub id rather than a local path, else None."""
    match = _HUB_ID.fullmatch(spec.strip())
    if match is None:
        return None
    repo = match["repo"]
    owner, name = repo.split("/")
    if Path(name).suffix.lower() in _FILE_SUFFIXES or Path(owner).expanduser().is_dir() or ".." in repo:
        return None  # a path: its folder exists here, or it names a model file
    return repo, match["revision"]


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or any(os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
                                                 for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def locate_hub_id(spec: str, config: Any = None, *, what: str = "model.source",
                  error: type[Exception] = RecipeError) -> Path | None:
    """The local snapshot folder of the hub id ``spec`` (downloaded when missing and the hub is reachable); None when
    ``spec`` is not a hub id; a one-line ``error`` naming ``what`` asked for it when it cannot be had."""
    parsed = parse_hub_id(spec)
    if parsed is None:
        return None
    repo, revision = parsed
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise error(f"{what} {spec!r} reads as a Hugging Face hub id, and huggingface_hub is not installed; "
                    "install edgetl's text extra (pip install 'edgetl[text]') or give a local folder") from None
    offline = _offline()
    named = f"{repo}@{revision}" if revision else repo
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=DOWNLOADED, local_files_only=offline)
    except LocalEntryNotFoundError:
        why = "the Hugging Face hub is switched off here (HF_HUB_OFFLINE)" if offline else \
            "the Hugging Face hub could not be reached"
        command = f"huggingface-cli download {repo}" + (f" --revision {revision}" if revision else "")
        raise error(f"{what} {spec!r}: {why} and {named} is not in the local cache ({constants.HF_HUB_CACHE}); "
                    f"download it where there is network ({command}, then copy that cache here or point "
                    "HF_HUB_CACHE at it) or give a local folder") from None
    except GatedRepoError:
        raise error(f"{what} {spec!r}: {repo} is gated on the Hugging Face hub; accept its terms on its page and log "
                    "in (huggingface-cli login), or give a local folder") from None
    except RevisionNotFoundError:
        raise error(f"{what} {spec!r}: {repo} has no revision {revision!r}; give a branch, tag or commit it has, or "
                    "drop the @revision") from None
    except RepositoryNotFoundError:
        raise error(f"{what} {spec!r}: no model {repo} on the Hugging Face hub (or it is private: log in with "
                    "huggingface-cli login); check the id, or give a local folder") from None
    except HfHubHTTPError as exc:
        raise error(f"{what} {spec!r}: the Hugging Face hub answered {str(exc).splitlines()[0][:160]}; retry, or "
                    "download it yourself and give the local folder") from None
    return Path(folder)


def hub_origin(path: Path) -> dict[str, str] | None:
    """{"hub_id", "hub_commit"} when ``path`` is a snapshot folder of the Hugging Face cache
    (``models--owner--name/snapshots/<commit>``), else None."""
    path = Path(path)
    repo_folder = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo_folder.startswith("models--") or not _COMMIT.fullmatch(path.name):
        return None
    return {"hub_id": repo_folder.removeprefix("models--").replace("--", "/"), "hub_commit": path.name}
