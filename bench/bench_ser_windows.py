"""Long recordings: how right is a window by how much speech it holds, and what leaving thin windows out does.

    python bench/bench_ser_windows.py        # needs ../shared/data/tess; prints "skipped" without

TESS (two speakers the shipped speech model never heard: it is trained on RAVDESS only) as the choice set:
per speaker and emotion, RECORDINGS recordings of CLIPS random clips of that emotion joined by PAUSE_SECONDS of
silence, seed SEED. Each recording goes through ser.predict's windows (3 s every 1.5 s, silent windows dropped,
the speech check); for each window kept, its speech (``ser.frontend.speech_check``'s active seconds) and whether
its own label is right; for each recording, its label with every window averaged (before stop 39), weighted by
speech, or without the windows under ``ser.predict.MIN_WINDOW_SPEECH_SHARE`` of speech. Writes
bench/results/ser_windows.md and .json.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402

from core.cli import CLIParser, add_verbose_flag, progress, quiet_tensorflow  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
RECORDINGS, CLIPS, PAUSE_SECONDS, SEED = 6, 4, 2.0, 0
SPEECH_BINS = ((0.0, 1.0), (1.0, 1.5), (1.5, 2.0), (2.0, 3.1))


def build_parser() -> CLIParser:
    p = CLIParser(prog="python bench/bench_ser_windows.py", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=os.environ.get("EMOTION_SHARED_DATA", str(DEFAULT_DATA)),
                   help="folder holding tess/ ($EMOTION_SHARED_DATA, default: %(default)s)")
    p.add_argument("--model-dir", default=str(REPO / "saved_models" / "ser"),
                   help="speech model (default: %(default)s)")
    p.add_argument("--out", default=str(RESULTS), help="folder for ser_windows.md / .json (default: %(default)s)")
    add_verbose_flag(p)
    return p


def recordings(tess: Path, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """(emotion, waveform at 16 kHz) for each recording."""
    from ser.audio import load_audio
    from ser.corpora import load_clips

    clips, _ = load_clips(["tess"], tess.parent)
    by: dict[tuple[str, str], list] = {}
    for clip in clips:
        by.setdefault((clip.speaker, clip.label), []).append(clip.path)
    pause = np.zeros(int(PAUSE_SECONDS * 16_000), np.float32)
    out = []
    for (_, emotion), paths in sorted(by.items()):
        for _ in range(RECORDINGS):
            picks = rng.choice(len(paths), CLIPS, replace=False)
            parts = [part for i in picks for part in (load_audio(paths[i]), pause)][:-1]
            out.append((emotion, np.concatenate(parts)))
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tess = Path(args.data_root) / "tess"
    if not tess.is_dir():
        print(f"skipped: {tess} is absent")
        return 0
    from core.io import atomic_write, write_json
    from core.labels import EMOTIONS
    from ser.frontend import speech_check
    from ser.predict import MIN_WINDOW_SPEECH_SHARE, SERPredictor, speech_windows

    predictor = SERPredictor(args.model_dir)
    least = MIN_WINDOW_SPEECH_SHARE * predictor.features.max_seconds
    windows, files = [], []
    for emotion, y in progress(recordings(tess, np.random.default_rng(SEED)), desc="recordings", unit="recording"):
        checked = [(w, speech_check(w, 16_000)) for _, _, w in speech_windows(y, predictor.features)]
        kept = [(w, c) for w, c in checked if c.is_speech]
        probs = predictor.window_probabilities([w for w, _ in kept])
        speech = np.array([c.active_seconds for _, c in kept])
        windows += [(s, EMOTIONS[int(np.argmax(p))] == emotion) for s, p in zip(speech, probs)]
        full = speech >= least
        files.append({"emotion": emotion,
                      "all": probs.mean(axis=0),
                      "weighted": (probs * speech[:, None]).sum(axis=0),
                      "thin_left_out": probs[full].mean(axis=0) if full.any() else probs.mean(axis=0)})
    speech = np.array([s for s, _ in windows])
    right = np.array([r for _, r in windows])
    bins = [{"speech_seconds": f"{lo:g}-{hi:g}", "n": int(((speech >= lo) & (speech < hi)).sum()),
             "accuracy": round(float(right[(speech >= lo) & (speech < hi)].mean()), 3)
             if ((speech >= lo) & (speech < hi)).any() else None} for lo, hi in SPEECH_BINS]
    rules = {rule: round(float(np.mean([EMOTIONS[int(np.argmax(f[rule]))] == f["emotion"] for f in files])), 3)
             for rule in ("all", "weighted", "thin_left_out")}
    results = {"recordings": len(files), "windows": len(windows), "least_speech_seconds": least, "bins": bins,
               "recording_accuracy": rules,
               "thin_windows": {"n": int((speech < least).sum()),
                                "accuracy": round(float(right[speech < least].mean()), 3)},
               "full_windows": {"n": int((speech >= least).sum()),
                                "accuracy": round(float(right[speech >= least].mean()), 3)}}
    out = Path(args.out)
    write_json(out / "ser_windows.json", results)
    text = ("# Long recordings: windows by their speech\n\n`python bench/bench_ser_windows.py`\n\n"
            f"TESS (never heard by `{Path(args.model_dir).name}`): {len(files)} recordings of {CLIPS} same-emotion "
            f"clips joined by {PAUSE_SECONDS:g} s pauses, {len(windows)} windows with speech.\n\n"
            "| speech in the window (s) | windows | window accuracy |\n|---|---|---|\n"
            + "".join(f"| {b['speech_seconds']} | {b['n']} | {b['accuracy']} |\n" for b in bins)
            + "\n| recording label from | accuracy |\n|---|---|\n"
            f"| every window, averaged (before stop 39) | {rules['all']} |\n"
            f"| windows weighted by their speech | {rules['weighted']} |\n"
            f"| windows under {least:g} s of speech left out (ser.predict) | {rules['thin_left_out']} |\n")
    atomic_write(out / "ser_windows.md", lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
