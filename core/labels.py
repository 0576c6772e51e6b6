"""The one 7-class emotion schema and the mapping of every corpus onto it.

Every loader in ``ser/``, ``fer/`` and ``fusion/`` maps its raw labels through
``map_label`` so the class order is the same everywhere.
"""
from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")
NUM_CLASSES = len(EMOTIONS)
EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}

# Raw label (as written in file names, folder names or CSV columns) -> schema label.
# ``None`` means the class exists in the corpus but is outside the schema and is
# dropped (and counted) by the loader.
CORPUS_LABELS: dict[str, dict[str, str | None]] = {
    # RAVDESS file name field 3 (EE). Calm is merged into neutral.
    "ravdess": {
        "01": "neutral", "02": "neutral", "03": "happy", "04": "sad",
        "05": "angry", "06": "fear", "07": "disgust", "08": "surprise",
    },
    # CREMA-D file name field 3, e.g. 1001_DFA_ANG_XX.wav. CREMA-D has no surprise.
    "crema_d": {
        "NEU": "neutral", "HAP": "happy", "SAD": "sad", "ANG": "angry",
        "FEA": "fear", "DIS": "disgust",
    },
    # TESS file-name suffix or folder name; "ps" is "pleasant surprise".
    "tess": {
        "neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry",
        "fear": "fear", "disgust": "disgust", "ps": "surprise",
        "pleasant_surprise": "surprise", "pleasant_surprised": "surprise",
    },
    # SAVEE file-name prefix letters, e.g. DC_a01.wav, JK_sa03.wav.
    "savee": {
        "n": "neutral", "h": "happy", "sa": "sad", "a": "angry",
        "f": "fear", "d": "disgust", "su": "surprise",
    },
    # FER2013 CSV codes and Kaggle image-folder names.
    "fer2013": {
        "0": "angry", "1": "disgust", "2": "fear", "3": "happy",
        "4": "sad", "5": "surprise", "6": "neutral",
        "angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
        "sad": "sad", "surprise": "surprise", "neutral": "neutral",
    },
    # JAFFE: second field of KA.AN1.39.tiff.
    "jaffe": {
        "NE": "neutral", "HA": "happy", "SA": "sad", "AN": "angry",
        "FE": "fear", "DI": "disgust", "SU": "surprise",
    },
    # CK+48 folder names. Contempt is not in the schema.
    "ckplus": {
        "neutral": "neutral", "happy": "happy", "sadness": "sad", "anger": "angry",
        "fear": "fear", "disgust": "disgust", "surprise": "surprise", "contempt": None,
    },
    # MELD ``Emotion`` column.
    "meld": {
        "neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry",
        "fear": "fear", "disgust": "disgust", "surprise": "surprise",
    },
}


class UnknownLabelError(ValueError):
    """A raw label that the corpus mapping does not know."""


def map_label(corpus: str, raw: str | int) -> str | None:
    """Map a corpus' raw label to the schema; ``None`` for labels the schema drops."""
    try:
        table = CORPUS_LABELS[corpus]
    except KeyError:
        raise UnknownLabelError(f"unknown corpus {corpus!r}; known: {sorted(CORPUS_LABELS)}") from None
    key = str(raw)
    if key not in table:
        key = key.lower() if key.lower() in table else key.upper()
    if key not in table:
        raise UnknownLabelError(f"{corpus}: unknown label {raw!r}; known: {sorted(table)}")
    return table[key]


def label_to_index(label: str) -> int:
    return EMOTION_INDEX[label]


def mapping_markdown() -> str:
    """The mapping table as Markdown (docs/datasets.md holds a copy; tests/test_docs.py keeps it in sync)."""
    lines = ["| corpus | raw label → schema label |", "|---|---|"]
    for corpus, table in CORPUS_LABELS.items():
        pairs = ", ".join(f"`{raw}` → {label or '*dropped*'}" for raw, label in table.items())
        lines.append(f"| {corpus} | {pairs} |")
    return "\n".join(lines)
