"""The model hub, behind one-line errors: small files of a hub checkpoint, read
from the local hub cache first (so that models used before work offline), and the
hub's exceptions turned into LaminiErrors that name the fix."""

from __future__ import annotations

import os
from pathlib import Path

from lamini_serve.checkpoint import Reader, local_reader
from lamini_serve.errors import LaminiError


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so that no network fails in seconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True  # the proxy decides; let the real request try
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_reader(repo_id: str) -> Reader:
    reachable: dict[str, bool] = {}

    def read(fname: str, required: bool = False, text: bool = False):
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # our one-line errors replace its retry chatter
        try:
            with hub_errors(repo_id):
                try:  # the local hub cache first: works offline for models used before
                    p = hf_hub_download(repo_id, fname, local_files_only=True)
                except LocalEntryNotFoundError:
                    if not constants.HF_HUB_OFFLINE:
                        if "hub" not in reachable:
                            reachable["hub"] = _hub_reachable()
                        if not reachable["hub"]:
                            raise ConnectionError("the hub endpoint is unreachable") from None
                    p = hf_hub_download(repo_id, fname)
        except EntryNotFoundError:
            if required:
                raise LaminiError(f"{repo_id} on the hub has no {fname}: it is not a transformers checkpoint") from None
            return None
        except LaminiError:
            if required:
                raise
            return None
        return local_reader(Path(p).parent)(Path(p).name, required, text)

    return read


class hub_errors:
    """Turn the hub's exceptions into one-line LaminiErrors."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, LaminiError):
            return False
        from huggingface_hub.utils import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        n = self.name
        if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
            return False  # the caller decides whether a missing file matters
        if isinstance(exc, GatedRepoError):
            raise LaminiError(f"{n} is gated on the hub; accept its terms there and run `huggingface-cli login`") from None
        if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
            raise LaminiError(
                f"unknown model {n!r}: no such local folder and no such repository on the hub; "
                f"check the spelling, or pass a local checkpoint folder"
            ) from None
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        if isinstance(exc, LocalEntryNotFoundError) or _is_connection_error(exc):
            why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached (no network?)"
            raise LaminiError(
                f"cannot fetch {n!r}: {why} and it is not in the local hub cache; "
                f"connect once to download it, or pass a local checkpoint folder (or `embedded`)"
            ) from None
        if isinstance(exc, OSError) and "is not a local folder and is not a valid model identifier" in str(exc):
            raise LaminiError(f"unknown model {n!r}; check the spelling, or pass a local checkpoint folder") from None
        return False


def _is_connection_error(exc: BaseException) -> bool:
    import requests

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
