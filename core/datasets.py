"""Where datasets live: ``--data-dir``, else ``$EMOTION_DATA_DIR``, else a kagglehub download.

``--data-dir`` may point at a root that holds one folder per corpus (``ravdess/``,
``tess/``, ...) or, for a single corpus, at the corpus folder itself.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

DATA_DIR_ENV = "EMOTION_DATA_DIR"

# Kaggle slugs users can download from; each is overridable on the command line.
KAGGLE_SLUGS: dict[str, str] = {
    "ravdess": "uwrfkaggler/ravdess-emotional-speech-audio",
    "crema_d": "ejlok1/cremad",
    "tess": "ejlok1/toronto-emotional-speech-set-tess",
    "savee": "ejlok1/surrey-audiovisual-expressed-emotion-savee",
    "fer2013": "msambare/fer2013",
    "ckplus": "shawon10/ckplus",
    "jaffe": "ahmedahmedsayed/jaffe-dataset",
    "meld": "zaber666/meld-dataset",
    "ravdess_video": "adrivg/ravdess-emotional-speech-video",
}

# Folder names a corpus is commonly unpacked under, tried in order below a data root.
FOLDER_ALIASES: dict[str, tuple[str, ...]] = {
    "ravdess": ("ravdess", "RAVDESS", "ravdess-emotional-speech-audio", "audio_speech_actors_01-24"),
    "crema_d": ("crema_d", "crema-d", "cremad", "CREMA-D", "AudioWAV"),
    "tess": ("tess", "TESS", "TESS Toronto emotional speech set data", "toronto-emotional-speech-set-tess"),
    "savee": ("savee", "SAVEE", "ALL", "AudioData"),
    "fer2013": ("fer2013", "FER2013", "fer-2013"),
    "ckplus": ("ckplus48", "ckplus", "CK+48", "ck+48", "CK+"),
    "jaffe": ("jaffe", "JAFFE", "jaffedbase"),
    "meld": ("meld", "MELD", "MELD.Raw"),
    "ravdess_video": ("ravdess_video", "RAVDESS_video"),
}

KAGGLE_HOST = ("www.kaggle.com", 443)
NETWORK_TIMEOUT_S = 3.0


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is neither on disk nor downloadable."""


def network_reachable(host: tuple[str, int] = KAGGLE_HOST, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    # kagglehub can retry for a long time without a network; probe first so we fail in seconds.
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def download(corpus: str, slug: str | None = None) -> Path:
    """Download (or reuse kagglehub's cache of) a corpus; clear error when offline."""
    slug = slug or KAGGLE_SLUGS.get(corpus)
    if not slug:
        raise DatasetNotFoundError(f"{corpus}: no Kaggle slug known; pass --data-dir PATH")
    hint = (f"Pass --data-dir PATH (a folder holding '{corpus}/' or the corpus itself) "
            f"or set {DATA_DIR_ENV}.")
    if not network_reachable():
        raise DatasetNotFoundError(
            f"{corpus}: cannot download '{slug}' with kagglehub: no network connection to kaggle.com. {hint}")
    try:
        import kagglehub

        path = kagglehub.dataset_download(slug)
    except Exception as exc:  # kagglehub raises many types (HTTP, auth, IO)
        raise DatasetNotFoundError(f"{corpus}: kagglehub download of '{slug}' failed: {exc}. {hint}") from exc
    log.info("%s: using kagglehub download at %s", corpus, path)
    return Path(path)


def find_corpus_dir(corpus: str, root: Path) -> Path:
    """The corpus folder below ``root``, or ``root`` itself when no known subfolder exists."""
    for name in FOLDER_ALIASES.get(corpus, (corpus,)):
        candidate = root / name
        if candidate.is_dir():
            return candidate
    return root


def resolve_corpus_dir(corpus: str, data_dir: str | os.PathLike | None = None, slug: str | None = None) -> Path:
    """Find a corpus on disk (``data_dir`` > ``$EMOTION_DATA_DIR``) or download it."""
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    if root:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetNotFoundError(f"{corpus}: data folder {root} does not exist")
        return find_corpus_dir(corpus, root)
    return download(corpus, slug)
