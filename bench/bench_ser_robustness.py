"""Does a speech model's answer survive what real recordings do besides the level? Label agreement under
recording changes: when it starts, the telephone band, background noise.

    python bench/bench_ser_robustness.py --model-dir saved_models/ser --model-dir saved_models/ser_compact
    python bench/bench_ser_robustness.py --folders ../shared/data/ravdess/Actor_10

For each model folder, every clip of its test speakers (its split.csv; or every audio file under ``--folders``)
is predicted as recorded and under each condition below, through ``SERPredictor.predict_waveform`` (speech check
included, as users get it), as ``bench/bench_ser_gain.py`` does for the level. Reported per condition: the share
of clips whose label equals the label as recorded (a "no speech" refusal disagrees), the share refused as "no
speech" and, with split labels, the accuracy. Conditions:
- ``shift 4 ms`` / ``shift 16 ms``: 64 / 256 samples of silence before the clip (the recording started a little
  earlier; sub-frame: the speech is the same, only its position in the analysis frames moves);
- ``silence 1 s``: a second of silence before and after;
- ``telephone``: down to 8 kHz and back (the 4 kHz band of a phone call);
- ``noise 30 dB`` / ``noise 20 dB``: white noise at that signal-to-noise ratio over the whole clip (seeded);
- ``speech 1.5 s`` / ``speech 1 s``: only the central 1.5 / 1 s of the clip's speech (``ser.features.speech_stretch``:
  a short reply, or what a live window holds);
- ``music 10 dB`` / ``music 0 dB``: a stretch of a music track (``--music``: a folder of tracks; by default
  Wesnoth's orchestral tracks, Debian ``wesnoth-1.16-music``, left out when absent) under the clip, 10 dB below
  the speech's active level (``ser.frontend.active_rms``, pauses left out) or as loud as it (seeded).
Writes OUT/ser_robustness.md and OUT/ser_robustness.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):  # the toolkit, and the gain bench this one shares its scoring with
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_ser_gain import add_clip_arguments, clips_of, label_each, score  # noqa: E402
from bench_ser_music import tracks as read_tracks  # noqa: E402
from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402

SAMPLE_RATE = 16_000
AS_RECORDED = "as recorded"
SEED = 0


def silence_before(samples: int):
    return lambda y: np.concatenate([np.zeros(samples), y])


def around(seconds: float):
    pad = np.zeros(int(seconds * SAMPLE_RATE))
    return lambda y: np.concatenate([pad, y, pad])


def telephone(y: np.ndarray) -> np.ndarray:
    from ser.features import phone_band

    return phone_band(y, SAMPLE_RATE)


def noise(snr_db: float):
    def add(y: np.ndarray) -> np.ndarray:
        from ser.features import add_white_noise

        # the same noise for the same clip, whatever the order
        return add_white_noise(y, snr_db, np.random.default_rng([SEED, y.size]))
    return add


def music(tracks: list[np.ndarray], snr_db: float):
    """A stretch of one of ``tracks`` under the clip, ``snr_db`` below the speech's active level; the same track and
    stretch for the same clip, whatever the order."""
    def add(y: np.ndarray) -> np.ndarray:
        from ser.features import mix_under

        rng = np.random.default_rng([SEED, y.size])
        track = tracks[int(rng.integers(len(tracks)))]
        start = int(rng.integers(0, max(1, track.size - y.size)))
        return mix_under(y, np.resize(track[start:start + y.size], y.size), snr_db)
    return add


def speech_only(seconds: float):
    def cut(y: np.ndarray) -> np.ndarray:
        from ser.features import speech_stretch

        return speech_stretch(y, SAMPLE_RATE, seconds)
    return cut


CONDITIONS = {AS_RECORDED: lambda y: y, "shift 4 ms": silence_before(64), "shift 16 ms": silence_before(256),
              "silence 1 s": around(1.0), "telephone": telephone, "noise 30 dB": noise(30.0),
              "noise 20 dB": noise(20.0), "speech 1.5 s": speech_only(1.5), "speech 1 s": speech_only(1.0)}
MUSIC_SNRS = (10.0, 0.0)
DEFAULT_MUSIC = Path("/usr/share/games/wesnoth/1.16/data/core/music")
MUSIC_TRACKS = 10  # the folder's first tracks, whole (a few MB each at 16 kHz)


def conditions_with_music(tracks: list[np.ndarray]) -> dict:
    return CONDITIONS | {f"music {snr:g} dB": music(tracks, snr) for snr in MUSIC_SNRS if tracks}


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/bench_ser_robustness.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_arguments(parser, "saved_models/ser and saved_models/ser_compact")
    parser.add_argument("--music", default=str(DEFAULT_MUSIC),
                        help="folder of music tracks played under the clips (default: Wesnoth's, where installed; "
                             "absent or empty: no music conditions)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"),
                        help="folder for ser_robustness.md and .json (default: bench/results)")
    add_verbose_flag(parser)
    return parser


def measure(model_dir: Path, args: argparse.Namespace, conditions: dict) -> dict:
    from ser.predict import SERPredictor

    predictor = SERPredictor(model_dir)
    paths, truth, source = clips_of(model_dir, args)
    start = time.perf_counter()
    labels, kept, unreadable = label_each(predictor, paths, truth, conditions, model_dir.name)
    if not kept:
        raise SystemExit(f"no readable clips for {model_dir} ({source})")
    reference = labels[AS_RECORDED]
    shown = os.path.relpath(model_dir, REPO) if model_dir.resolve().is_relative_to(REPO) else str(model_dir)
    return {"model_dir": shown, "model": predictor.config.get("model"), "source": source,
            "clips": len(kept), "unreadable": unreadable, "seconds": round(time.perf_counter() - start, 1),
            "conditions": {name: score(got, None if name == AS_RECORDED else reference, kept)
                           for name, got in labels.items()}}


def markdown(results: list[dict]) -> str:
    changed = [name for name in results[0]["conditions"] if name != AS_RECORDED]
    lines = ["Label agreement with the clip as recorded when the recording changes (see the script's docstring), "
             "accuracy, and the share of these real speech clips refused as \"no speech\".", "",
             "| model | clips | " + " | ".join(changed) + " |", "|---|---|" + "---|" * len(changed)]
    for r in results:
        c = r["conditions"]
        cells = [f"{c[name]['agreement']:.3f}" for name in changed]
        lines.append(f"| {r['model_dir']} ({r['model']}): agreement | {r['clips']} | " + " | ".join(cells) + " |")
        if "accuracy" in c[AS_RECORDED]:
            cells = [f"{c[name]['accuracy']:.3f}" for name in changed]
            lines.append(f"| accuracy (as recorded {c[AS_RECORDED]['accuracy']:.3f}) | | " + " | ".join(cells) + " |")
        cells = [f"{100 * c[name]['no_speech_rate']:.1f} %" for name in changed]
        lines.append("| no speech | | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {r['model_dir']}: {r['source']}" for r in results]
    if any(name.startswith("music") for name in changed):
        lines.append(f"- music: the first {MUSIC_TRACKS} tracks of the --music folder, a seeded stretch per clip")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = build_parser().parse_args()
    from core.io import write_json

    models = args.model_dir or [str(REPO / "saved_models" / "ser"), str(REPO / "saved_models" / "ser_compact")]
    music_tracks = read_tracks(Path(args.music), MUSIC_TRACKS)
    if not music_tracks:
        print(f"no music tracks under {args.music}: the music conditions are left out", file=sys.stderr)
    conditions = conditions_with_music(music_tracks)
    results = [measure(Path(d), args, conditions) for d in models]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ser_robustness.json", {"conditions": list(conditions), "seed": SEED,
                                             "music": args.music if music_tracks else None, "models": results})
    text = markdown(results)
    (out / "ser_robustness.md").write_text(text)
    print(text)


if __name__ == "__main__":
    quiet_tensorflow()
    main()
