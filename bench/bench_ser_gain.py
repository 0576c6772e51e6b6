"""Does a speech model's answer survive a change of microphone level? Label agreement at other gains.

    python bench/bench_ser_gain.py                                  # saved_models/ser_compact, its test speakers
    python bench/bench_ser_gain.py --model-dir saved_models/ser --model-dir runs/x
    python bench/bench_ser_gain.py --folders ../shared/data/ravdess ../shared/data/tess

For each model folder, every clip of its test speakers (its split.csv; or every audio file under
``--folders``) is predicted at gain 1 and at each of ``--gains``, through ``SERPredictor.predict_waveform``
(speech check included, as users get it). Reported per gain: the share of clips whose label equals the
label at gain 1 (a clip refused as "no speech" at either gain counts as a disagreement), the share refused
as "no speech" (all clips are real speech, so every refusal is a false reject) and, with split labels,
the accuracy. Writes OUT/ser_gain.md and OUT/ser_gain.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import CLIParser, add_verbose_flag, progress, quiet_tensorflow  # noqa: E402

DEFAULT_MODEL = REPO / "saved_models" / "ser_compact"
DEFAULT_GAINS = "0.1,0.3,3"
GOAL = 0.98  # label agreement the front end should reach at every gain


def add_clip_arguments(parser: argparse.ArgumentParser, default_models: str) -> None:
    """Which models, and which of their clips: the options every speech robustness bench shares."""
    parser.add_argument("--model-dir", action="append", default=None,
                        help=f"SER run folder; repeat for several (default: {default_models})")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                        help="folder the split.csv paths are relative to (default: ../shared/data)")
    parser.add_argument("--split", default="test", help="which split.csv rows to use (default: %(default)s)")
    parser.add_argument("--folders", nargs="+", default=None,
                        help="audio files or folders to use instead of the model's split (no accuracy then)")


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/bench_ser_gain.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_arguments(parser, "saved_models/ser_compact")
    parser.add_argument("--gains", default=DEFAULT_GAINS, help="comma-separated gains compared with gain 1 "
                        "(default: %(default)s)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"),
                        help="folder for ser_gain.md and ser_gain.json (default: bench/results)")
    add_verbose_flag(parser)
    return parser


def clips_of(model_dir: Path, args: argparse.Namespace) -> tuple[list[Path], list[str | None], str]:
    """(paths, true labels or None, description of where they come from)."""
    import pandas as pd

    from ser.predict import expand_paths

    if args.folders:
        paths = expand_paths(args.folders)
        return paths, [None] * len(paths), "all audio files under " + ", ".join(args.folders)
    split_csv = model_dir / "split.csv"
    if not split_csv.is_file():
        raise SystemExit(f"{model_dir} has no split.csv: pass --folders to say which clips to use")
    rows = pd.read_csv(split_csv).query("split == @args.split")
    if rows.empty:
        raise SystemExit(f"{split_csv} has no '{args.split}' rows")
    speakers = ", ".join(sorted(rows["speaker"].unique()))
    paths = [Path(args.data_dir) / f for f in rows["file"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} clips of {split_csv} are not under {args.data_dir} (first: {missing[0]}); "
                         f"pass --data-dir")
    return paths, list(rows["label"]), f"{args.split} split of {split_csv.name}: speakers {speakers}"


def label_each(predictor, paths: list[Path], truth: list[str | None], conditions: dict, desc: str
               ) -> tuple[dict, list[str | None], int]:
    """Each readable clip's label under every condition (name -> function of the 16 kHz float64 waveform), through
    ``SERPredictor.predict_waveform`` as users get it (None: refused as "no speech"); also the kept clips' true
    labels and the count of unreadable files (counted, not scored: the file is broken, not the front end)."""
    from ser.audio import AudioError, load_audio
    from ser.frontend import NoSpeechError

    labels: dict = {name: [] for name in conditions}
    kept_truth: list[str | None] = []
    unreadable = 0
    for path, label in progress(list(zip(paths, truth)), total=len(paths), desc=desc):
        try:
            y = load_audio(path).astype(np.float64)
        except AudioError:
            unreadable += 1
            continue
        kept_truth.append(label)
        for name, change in conditions.items():
            try:
                probs = predictor.predict_waveform(change(y).astype(np.float32), 16_000)
                labels[name].append(predictor.class_names[int(np.argmax(probs))])
            except NoSpeechError:
                labels[name].append(None)
    return labels, kept_truth, unreadable


def measure(model_dir: Path, args: argparse.Namespace, gains: list[float]) -> dict:
    from ser.predict import SERPredictor

    predictor = SERPredictor(model_dir)
    paths, truth, source = clips_of(model_dir, args)
    all_gains = [1.0] + gains
    start = time.perf_counter()
    labels, kept_truth, unreadable = label_each(predictor, paths, truth,
                                                {g: (lambda y, g=g: g * y) for g in all_gains}, model_dir.name)
    seconds = time.perf_counter() - start
    n = len(kept_truth)
    if n == 0:
        raise SystemExit(f"no readable clips for {model_dir} ({source})")

    return {"model_dir": str(model_dir), "model": predictor.config.get("model"),
            "level_norm": bool(getattr(predictor.features, "level_norm", False)), "source": source, "clips": n,
            "unreadable": unreadable, "seconds": round(seconds, 1),
            "gains": {str(g): score(labels[g], None if g == 1.0 else labels[1.0], kept_truth) for g in all_gains}}


def score(got: list[str | None], reference: list[str | None] | None, truth: list[str | None]) -> dict:
    """False rejects ("no speech" for real speech), agreement with ``reference`` (a refusal disagrees) and, with
    true labels, accuracy, of one condition's labels."""
    n = len(got)
    no_speech = sum(label is None for label in got)
    row = {"no_speech": no_speech, "no_speech_rate": round(no_speech / n, 4)}
    if reference is not None:
        row["agreement"] = round(sum(a is not None and a == b for a, b in zip(got, reference)) / n, 4)
    if truth and truth[0] is not None:
        row["accuracy"] = round(sum(a == t for a, t in zip(got, truth)) / n, 4)
    return row


def markdown(results: list[dict], gains: list[float]) -> str:
    agreement_heads = " | ".join(f"agreement {g:g}x" for g in gains)
    per_gain = " / ".join(f"{g:g}x" for g in [1.0] + gains)
    lines = [f"Label agreement with gain 1 when the same clip is played at another level (goal >= {GOAL}), "
             "and the share of these real speech clips refused as \"no speech\" (false rejects). Gains are "
             "applied to the decoded float samples without clipping.", "",
             f"| model | level norm | clips | accuracy {per_gain} | {agreement_heads} | no speech {per_gain} |",
             "|---|---|---|---|" + "---|" * len(gains) + "---|"]
    for r in results:
        accuracy = " / ".join(f"{r['gains'][str(g)]['accuracy']:.3f}" for g in [1.0] + gains) \
            if "accuracy" in r["gains"]["1.0"] else "-"
        agreement = " | ".join(f"{r['gains'][str(g)]['agreement']:.3f}" for g in gains)
        rejects = " / ".join(f"{100 * r['gains'][str(g)]['no_speech_rate']:.1f} %" for g in [1.0] + gains)
        lines.append(f"| {r['model_dir']} ({r['model']}) | {'yes' if r['level_norm'] else 'no'} | {r['clips']} | "
                     f"{accuracy} | {agreement} | {rejects} |")
    lines += [""] + [f"- {r['model_dir']}: {r['source']}" for r in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = build_parser().parse_args()
    from core.io import write_json

    gains = [float(g) for g in args.gains.split(",") if g.strip()]
    if not gains or any(g <= 0 for g in gains):
        raise SystemExit(f"--gains must be positive numbers, got {args.gains!r}")
    results = [measure(Path(d), args, gains) for d in (args.model_dir or [str(DEFAULT_MODEL)])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ser_gain.json", {"gains": gains, "goal": GOAL, "models": results})
    text = markdown(results, gains)
    (out / "ser_gain.md").write_text(text)
    print(text)


if __name__ == "__main__":
    quiet_tensorflow()
    main()
