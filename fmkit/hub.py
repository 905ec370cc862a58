"""The Hugging Face Hub, reached only through huggingface_hub's own calls, so its cache, endpoint
(``HF_ENDPOINT`` mirrors), proxies and offline mode (``HF_HUB_OFFLINE``) apply as the user set them; fmkit
changes no environment variable. Its errors become one line that says what to do."""

from __future__ import annotations

import re
from pathlib import Path

from fmkit.errors import FmkitError, first_line

CACHE_FOLDER = re.compile(r"^models--(?P<owner>[^/]+?)--(?P<name>[^/]+)$")


def snapshot(hub_id: str, revision: str | None = None, role: str = "--model") -> str:
    """The local folder of the hub model ``hub_id``: its cached snapshot, else downloaded. ``role`` names
    what asked for it in errors (an option, or the run that needs it)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return snapshot_download(hub_id, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        pass  # not cached: download it
    except HFValidationError:
        raise FmkitError(f"{role} {hub_id}: not a local directory, an installed model package or a hub id") from None
    try:
        return snapshot_download(hub_id, revision=revision)
    except GatedRepoError:
        raise FmkitError(f"{role} {hub_id}: a gated model; accept its terms on the hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise FmkitError(f"{role} {hub_id}: no such model on the hub (or a private one: log in with hf auth login)") from None
    except RevisionNotFoundError:
        raise FmkitError(f"{role} {hub_id}: no revision {revision!r} on the hub") from None
    except LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE) or the hub unreachable
        raise FmkitError(f"{role} {hub_id}: not in the hub cache, and the hub cannot be reached "
                         "(offline, or no connection): download it where there is one, or give a local copy") from None
    except HfHubHTTPError as exc:
        raise FmkitError(f"{role} {hub_id}: download failed ({first_line(exc)})") from None


def cached_id(path: str | Path) -> str | None:
    """The hub id of a folder inside the hub cache (``.../models--OWNER--NAME/snapshots/REVISION``), else None."""
    parts = Path(path).resolve().parts
    for folder, below in zip(parts, parts[1:]):
        match = CACHE_FOLDER.match(folder)
        if match and below == "snapshots":
            return f"{match['owner']}/{match['name']}"
    return None

