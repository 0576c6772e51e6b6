"""The shipped fusion folder: ``python -m fusion.predict clip.mp4`` with no flags (late fusion of the shipped ser
and fer models with ``saved_models/fusion/late_fusion.json``), audio-only and video-only clips, the late-fusion
file as the server reads it, and the weight fitting's promise never to score below the better modality."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.io import read_json
from core.labels import EMOTIONS
from tests.synth_video import render_audio, write_audio_only_mp4, write_clip

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    import soundfile

    base = tmp_path_factory.mktemp("shipped_fusion")
    voice = render_audio(2.0, 16_000, emotion=3)
    soundfile.write(base / "voice.wav", voice, 16_000)
    return {"av": write_clip(base / "av.mp4", seconds=2.0, size=(160, 160), emotion=1),
            "silent": write_clip(base / "silent.mp4", seconds=2.0, size=(160, 160), emotion=1, with_audio=False),
            "voice_mp4": write_audio_only_mp4(base / "voice.mp4", voice), "wav": base / "voice.wav"}


def _vector(probs: dict) -> np.ndarray:
    return np.array([probs[e] for e in EMOTIONS])


@pytest.mark.usefixtures("synthetic_voices_pass")
def test_predict_without_flags_fuses_with_the_shipped_weights(clips, capsys, repo_root):
    from fusion.late import load_late_fusion
    from fusion.predict import main

    shipped = load_late_fusion()
    assert shipped.source == str(repo_root / "saved_models" / "fusion" / "late_fusion.json")
    assert main([str(clips["av"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["mode"] == "late" and result["used"] == ["voice", "face"]
    assert result["weights"] == {"voice": shipped.weights["audio"], "face": shipped.weights["face"]}
    assert result["rule"] == shipped.rule and result["frames_with_face"] > 0
    expected = shipped.fuse({"audio": _vector(result["voice"]["probabilities"]),
                             "face": _vector(result["face"]["probabilities"])})
    np.testing.assert_allclose(_vector(result["probabilities"]), expected, atol=1e-4)  # printed to 6 decimals
    assert result["label"] == EMOTIONS[int(np.argmax(expected))]


@pytest.mark.usefixtures("synthetic_voices_pass")
def test_audio_files_go_to_the_voice_and_silent_video_to_the_face(clips, capsys):
    from fusion.predict import main

    paths = [clips["voice_mp4"], clips["wav"], clips["silent"]]
    assert main([*map(str, paths), "--json"]) == 0
    voice_mp4, wav, silent = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    for result in (voice_mp4, wav):
        assert result["used"] == ["voice"] and result["face_missing"] == "no video track"
        assert result["probabilities"] == result["voice"]["probabilities"]
    np.testing.assert_allclose(_vector(voice_mp4["probabilities"]), _vector(wav["probabilities"]), atol=0.05)
    assert silent["used"] == ["face"] and silent["audio_missing"] == "no audio track"
    assert silent["label"] == silent["face"]["label"]


@pytest.mark.usefixtures("synthetic_voices_pass")
def test_an_audio_file_gets_the_voice_answer_of_ser_predict(tmp_path, capsys):
    """A file without pictures is read as ``ser.predict`` reads it (the file's own rate, resampled by the speech
    front end), so ``fusion.predict`` gives exactly its answer, here for a 48 kHz recording."""
    import soundfile

    from fusion.predict import main as fusion_main
    from ser.predict import main as ser_main

    path = tmp_path / "voice48k.wav"
    soundfile.write(path, render_audio(2.5, 48_000, emotion=2, seed=3), 48_000)
    assert ser_main([str(path), "--json"]) == 0
    heard = json.loads(capsys.readouterr().out.splitlines()[0])
    assert fusion_main([str(path), "--json"]) == 0
    fused = json.loads(capsys.readouterr().out.splitlines()[0])
    assert fused["used"] == ["voice"]
    assert fused["voice"]["probabilities"] == heard["probabilities"]
    assert fused["duration_seconds"] == 2.5 and fused["truncated"] is False


def test_server_function_reads_the_late_fusion_file(tmp_path, repo_root):
    from fusion.late import LateFusionConfig, find_late_fusion, load_late_fusion

    shipped = load_late_fusion(repo_root / "saved_models")
    assert set(shipped.weights) <= {"audio", "face"} and shipped.rule in ("mean", "product")
    face = dict(zip(EMOTIONS, [0.1, 0.6, 0.1, 0.05, 0.05, 0.05, 0.05]))
    voice = dict(zip(EMOTIONS, [0.05, 0.1, 0.1, 0.6, 0.05, 0.05, 0.05]))
    fused = shipped.fuse_named(face, voice)
    assert list(fused) == list(EMOTIONS) and sum(fused.values()) == pytest.approx(1.0, abs=1e-5)
    assert shipped.fuse_named(None, voice) == pytest.approx(voice, abs=1e-6)  # one modality: itself
    assert shipped.fuse_named(None, None) is None
    # A models folder without a fusion/ folder: the older <models>/late_fusion.json, then the even default.
    assert load_late_fusion(tmp_path) == LateFusionConfig()
    (tmp_path / "late_fusion.json").write_text(json.dumps({"weights": {"audio": 0.8, "face": 0.2}}))
    assert load_late_fusion(tmp_path).weights == {"audio": 0.8, "face": 0.2}
    (tmp_path / "fusion").mkdir()
    (tmp_path / "fusion" / "late_fusion.json").write_text(json.dumps({"weights": {"audio": 0.3, "face": 0.7},
                                                                      "rule": "product"}))
    assert find_late_fusion(tmp_path) == tmp_path / "fusion" / "late_fusion.json"
    cfg = load_late_fusion(tmp_path)
    assert cfg.rule == "product" and cfg.weights == {"audio": 0.3, "face": 0.7}
    (tmp_path / "fusion" / "late_fusion.json").write_text('{"weights": {"audio": -1}}')
    with pytest.raises(ValueError, match="non-negative"):
        load_late_fusion(tmp_path)


def test_shipped_file_was_fitted_on_validation_for_the_shipped_models(repo_root):
    data = read_json(repo_root / "saved_models" / "fusion" / "late_fusion.json")
    assert "validation" in data["fitted_on"]
    assert data["models"]["ser"]["dir"] == "saved_models/ser" and data["models"]["fer"]["dir"] == "saved_models/fer"
    # Fitted for the very models that ship: otherwise every fusion.predict warns "re-fit them" out of the box.
    from fusion.late import model_fingerprint

    for name in ("ser", "fer"):
        assert data["models"][name]["sha256"] == model_fingerprint(repo_root / "saved_models" / name), name
    # The fitting's promise: never below the better single modality on the clips it was fitted on.
    assert data["f1_macro"] >= max(data["f1_macro_single_modality"].values())
    assert (repo_root / "saved_models" / "fusion" / "MODEL_CARD.md").is_file()


def test_bad_late_fusion_specs_are_refused_clearly(tmp_path, capsys, clips):
    from fusion.late import read_late_config
    from fusion.predict import main

    with pytest.raises(FileNotFoundError, match="no such file"):
        read_late_config(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="rule"):
        read_late_config("audio=0.5,face=0.5,rule=vote")
    with pytest.raises(ValueError, match="non-negative"):
        read_late_config("audio=0,face=0")
    # the answers call the audio's weight "voice": a spec may too
    assert read_late_config("voice=0.7,face=0.3,rule=product").weights == {"audio": 0.7, "face": 0.3}
    with pytest.raises(ValueError, match="non-negative"):
        read_late_config("voice=0.7,audio=0.2,face=0.1,speech=1")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a late-fusion file"):
        read_late_config(tmp_path / "bad.json")
    assert main([str(clips["av"]), "--late-weights", "audio=x"]) == 2
    assert "error:" in capsys.readouterr().err


def _synthetic_probs(rng, y: np.ndarray, audio_acc: float, face_acc: float, noise_face: bool = False) -> list[dict]:
    """Per clip: each modality puts most mass on the true class with the given accuracy, independently."""
    out = []
    for label in y:
        probs = {}
        for m, acc in (("audio", audio_acc), ("face", face_acc)):
            if m == "face" and noise_face:
                probs[m] = rng.dirichlet(np.ones(7))
                continue
            top = label if rng.random() < acc else rng.integers(7)
            p = rng.dirichlet(np.ones(7)) * 0.4
            p[top] += 0.6
            probs[m] = p / p.sum()
        out.append(probs)
    return out


def test_fitting_never_scores_below_the_better_modality_and_falls_back_to_it():
    from fusion.late import fit_late_fusion, fuse

    rng = np.random.default_rng(0)
    y = np.arange(140) % 7
    noise = fit_late_fusion(_synthetic_probs(rng, y, 0.8, 0.0, noise_face=True), y)
    assert noise["fallback"] and noise["fallback_to"] == "audio" and noise["weights"] == {"audio": 1.0, "face": 0.0}
    both = _synthetic_probs(rng, y, 0.6, 0.6)
    fit = fit_late_fusion(both, y)
    assert not fit["fallback"] and fit["f1_macro"] > max(fit["f1_macro_single_modality"].values())
    for seed in range(5):  # whatever the data, the chosen weights score at least the better modality alone
        trial = np.random.default_rng(seed)
        probs = _synthetic_probs(trial, y, trial.uniform(0.2, 0.9), trial.uniform(0.2, 0.9))
        result = fit_late_fusion(probs, y, steps=11)
        assert result["f1_macro"] >= max(result["f1_macro_single_modality"].values())
    # The product rule is the normalised weighted geometric mean; a missing modality leaves the other alone.
    a, f = (np.clip(both[0][m], 1e-4, 1.0) for m in ("audio", "face"))  # fuse floors probabilities at 1e-4
    expected = a ** 0.7 * f ** 0.3
    np.testing.assert_allclose(fuse(both[0], {"audio": 0.7, "face": 0.3}, "product"), expected / expected.sum(),
                               rtol=1e-6)
    # Clips without a face: the face's single-modality score lets the voice answer there (the fallback policy);
    # "alone_where_present" scores the face on its own clips only.
    perfect = [{"audio": np.eye(7)[label], "face": np.eye(7)[(label + 1) % 7] if i % 2 else None}
               for i, label in enumerate(y)]
    gapped = fit_late_fusion(perfect, y)
    assert gapped["f1_macro_single_modality"]["face"] > 0.3  # the voice's right answers on the faceless half
    assert gapped["alone_where_present"]["face"] == {"clips": 70, "f1_macro": 0.0}
    assert gapped["alone_where_present"]["audio"] == {"clips": 140, "f1_macro": 1.0}
    alone = both[0]["audio"]
    np.testing.assert_allclose(fuse({"audio": alone, "face": None}, {"audio": 0.7, "face": 0.3}, "product"), alone,
                               rtol=1e-6)


@pytest.mark.realdata
def test_real_ravdess_clip_with_the_shipped_folder(shared_data):
    from fusion.predict import load_predictor

    clip = shared_data / "ravdess_video" / "Actor_01" / "01-01-01-01-01-01-01.mp4"
    result = load_predictor().predict_clip(clip)
    assert result["mode"] == "late" and result["used"] == ["voice", "face"]
    assert result["frames_with_face"] >= 0.8 * result["frames_sampled"] and result["label"] in EMOTIONS
