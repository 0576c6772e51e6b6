"""Whisper's no-speech probability (ser.whisper.no_speech): the first decoder step against ctranslate2's own on a
tiny random Whisper, the silent tail of the window, token lookup, encoder-only folders, how the predictor and
the live stream use it, and (real weights) music refused while speech is kept."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ser.frontend import NoSpeechError
from ser.whisper.ct2 import write_model_bin
from ser.whisper.no_speech import NO_SPEECH_THRESHOLD, NoSpeechHead, NoSpeechUnavailable, token_ids
from tests import synth_audio as synth
from tests.test_ser_whisper import DIM, FFN, HEADS, LAYERS, tiny_variables

VOCAB = [f"t{i}" for i in range(20)] + ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>",
                                        "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                                        "<|notimestamps|>"]


def tiny_whisper(folder, seed: int = 1):
    """A random encoder + decoder Whisper in CTranslate2's layout, with the files ctranslate2 needs to load it."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: (0.3 * rng.standard_normal(shape)).astype(np.float16)  # noqa: E731
    norm = lambda: (1 + w(DIM)).astype(np.float16)  # noqa: E731
    v = tiny_variables()
    v.pop("decoder/embeddings/weight")
    flags = {"activation": 3, "alibi": 0, "alibi_use_positive_positions": 0, "pre_norm": 1, "scale_alibi": 0,
             "scale_embeddings": 0, "start_from_zero_embedding": 0}
    v |= {f"decoder/{k}": np.array(x, np.int8) for k, x in flags.items()}
    v |= {"decoder/alignment_heads": np.array(1, np.int16), "decoder/alignment_layer": np.array(-1, np.int16),
          "decoder/num_heads": np.array(HEADS, np.int16), "decoder/embeddings/weight": w(len(VOCAB), DIM),
          # an output layer of its own, so a test sees that it is used instead of the embedding
          "decoder/projection/weight": w(len(VOCAB), DIM), "decoder/position_encodings/encodings": w(8, DIM),
          "decoder/layer_norm/gamma": norm(), "decoder/layer_norm/beta": w(DIM)}
    for i in range(LAYERS):
        p = f"decoder/layer_{i}"
        for block in ("self_attention", "attention", "ffn"):
            v |= {f"{p}/{block}/layer_norm/gamma": norm(), f"{p}/{block}/layer_norm/beta": w(DIM)}
        v |= {f"{p}/self_attention/linear_0/weight": w(3 * DIM, DIM), f"{p}/self_attention/linear_0/bias": w(3 * DIM),
              f"{p}/self_attention/linear_1/weight": w(DIM, DIM), f"{p}/self_attention/linear_1/bias": w(DIM),
              f"{p}/attention/linear_0/weight": w(DIM, DIM), f"{p}/attention/linear_0/bias": w(DIM),
              f"{p}/attention/linear_1/weight": w(2 * DIM, DIM), f"{p}/attention/linear_1/bias": w(2 * DIM),
              f"{p}/attention/linear_2/weight": w(DIM, DIM), f"{p}/attention/linear_2/bias": w(DIM),
              f"{p}/ffn/linear_0/weight": w(FFN, DIM), f"{p}/ffn/linear_0/bias": w(FFN),
              f"{p}/ffn/linear_1/weight": w(DIM, FFN), f"{p}/ffn/linear_1/bias": w(DIM)}
    folder.mkdir(parents=True, exist_ok=True)
    write_model_bin(folder / "model.bin", v)
    (folder / "vocabulary.json").write_text(json.dumps(VOCAB))
    (folder / "config.json").write_text(json.dumps({"alignment_heads": [[0, 0]], "lang_ids": [VOCAB.index("<|en|>")],
                                                    "suppress_ids": [], "suppress_ids_begin": []}))
    return folder


def test_first_decoder_step_matches_ctranslate2_with_the_window_tail_taken_from_silence(tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    folder = tiny_whisper(tmp_path / "tiny")
    reference = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    rng = np.random.default_rng(0)
    silence = rng.standard_normal((40, DIM)).astype(np.float32)
    head = NoSpeechHead(folder, silence)
    answers = []
    for clip_steps in (0, 1, 12, 40):
        window = silence.copy()
        window[:clip_steps] = 3 * rng.standard_normal((clip_steps, DIM))
        theirs = reference.generate(ctranslate2.StorageView.from_array(window[None]), [["<|startoftranscript|>"]],
                                    return_no_speech_prob=True, max_length=2)[0].no_speech_prob
        ours = head.probability(window[:clip_steps])
        assert ours == pytest.approx(theirs, abs=1e-5)
        answers.append(ours)
    assert np.ptp(answers) > 1e-3  # the clip's states do move it
    batch = head.probabilities([silence[:5], silence[:0], silence])
    np.testing.assert_allclose(batch, [head.probability(silence)] * 3, atol=1e-6)
    with pytest.raises(ValueError, match="41 encoder steps"):
        head.probability(np.zeros((41, DIM), np.float32))


def test_token_ids_come_from_the_vocabulary_in_either_layout(tmp_path):
    (tmp_path / "vocabulary.json").write_text(json.dumps(VOCAB))
    assert token_ids(tmp_path) == (VOCAB.index("<|startoftranscript|>"), VOCAB.index("<|nospeech|>"))
    renamed = {t.replace("nospeech", "nocaptions"): i for i, t in enumerate(VOCAB)}  # Whisper before large-v3
    (tmp_path / "vocabulary.json").write_text(json.dumps(renamed))
    assert token_ids(tmp_path)[1] == VOCAB.index("<|nospeech|>")
    (tmp_path / "vocabulary.json").write_text(json.dumps(VOCAB[:20]))
    with pytest.raises(NoSpeechUnavailable, match="not a Whisper vocabulary"):
        token_ids(tmp_path)


def test_an_encoder_only_folder_warns_once_and_leaves_the_signal_check_alone(tmp_path, caplog):
    from ser.whisper.encoder import WhisperEncoder, WhisperFeatureConfig, get_encoder

    folder = tmp_path / "encoder_only"
    folder.mkdir()
    write_model_bin(folder / "model.bin", tiny_variables())  # an encoder and one stray decoder variable
    with pytest.raises(NoSpeechUnavailable, match="no decoder weights"):
        NoSpeechHead(folder, np.zeros((4, DIM), np.float32))
    cfg = WhisperFeatureConfig(encoder=str(folder), encoder_sha256="tiny", num_states=LAYERS + 1, hidden_dim=DIM,
                               max_seconds=1.0, pad_seconds=1.0)
    y = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="ser.whisper.encoder"):
        frames, heard = cfg.frames_and_no_speech([y, y])
        cfg.frames_and_no_speech([y])
    assert heard == [None, None] and len(frames) == 2
    assert sum("no decoder weights" in r.getMessage() for r in caplog.records) == 1
    assert isinstance(get_encoder(str(folder)), WhisperEncoder)


def test_a_tiny_whisper_gives_each_window_its_probability_from_the_same_encoding(tmp_path):
    from ser.whisper.encoder import WhisperFeatureConfig

    folder = tiny_whisper(tmp_path / "tiny")
    common = dict(encoder=str(folder), encoder_sha256="tiny", num_states=LAYERS + 1, hidden_dim=DIM,
                  max_seconds=1.0)
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (8000, 16000, 12000)]
    padded = WhisperFeatureConfig(**common, pad_seconds=1.0)  # the tiny encoder's window is 64 steps (1.28 s)
    frames, heard = padded.frames_and_no_speech(clips)
    assert all(0.0 < q < 1.0 for q in heard) and len(set(heard)) == 3
    np.testing.assert_array_equal(np.concatenate(frames), np.concatenate(padded.frames_batch(clips)))
    alone = WhisperFeatureConfig(**common)  # encoded without padding: Whisper cannot judge (docs)
    assert not alone.hears_no_speech and alone.frames_and_no_speech(clips)[1] == [None] * 3


def test_with_phases_whisper_judges_only_the_waveform_as_given(tmp_path, monkeypatch):
    """Shifted copies (``phases``) average the states; the no-speech probability is the unshifted copy's, so the
    decoder step runs once per waveform, not once per phase."""
    from dataclasses import replace

    from ser.whisper.encoder import WhisperFeatureConfig
    from ser.whisper.no_speech import NoSpeechHead

    folder = tiny_whisper(tmp_path / "tiny")
    one = WhisperFeatureConfig(encoder=str(folder), encoder_sha256="tiny", num_states=LAYERS + 1, hidden_dim=DIM,
                               max_seconds=1.0, pad_seconds=1.0)
    rng = np.random.default_rng(2)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (8000, 12000)]
    asked: list[int] = []
    probabilities = NoSpeechHead.probabilities
    monkeypatch.setattr(NoSpeechHead, "probabilities", lambda self, windows: asked.append(len(windows))
                        or probabilities(self, windows))
    _, heard_one = one.frames_and_no_speech(clips)
    _, heard_four = replace(one, phases=4).frames_and_no_speech(clips)
    assert asked == [2, 2]
    np.testing.assert_allclose(heard_four, heard_one, rtol=1e-5)


class _Predictor:
    """SERPredictor's deciding code on windows whose Whisper answers are given."""

    def __new__(cls, answers):
        from ser.predict import SERPredictor

        predictor = object.__new__(SERPredictor)
        predictor.members = []
        predictor.class_names = ["neutral", "happy"]
        windows = [(float(i), float(i) + 3.0, np.full(10, i, np.float32)) for i in range(len(answers))]
        predictor.speech_segments = lambda y, sr, hop=None, source="audio": windows
        predictor.window_outputs = lambda ws: (np.array([[0.3, 0.7]] * len(ws)), list(answers))
        return predictor


def test_windows_whisper_hears_no_speech_in_are_dropped_and_a_file_of_them_is_no_speech():
    kept = _Predictor([0.9, 0.2, None]).predict_segments(np.zeros(10), 16_000)
    assert [start for start, _, _ in kept] == [1.0, 2.0]
    with pytest.raises(NoSpeechError) as caught:
        _Predictor([0.7, 0.95, NO_SPEECH_THRESHOLD]).predict_segments(np.zeros(10), 16_000, source="song.ogg")
    assert caught.value.reason == "other sound" and caught.value.no_speech_probability == 0.95
    assert str(caught.value).startswith("song.ogg: no speech: Whisper hears no speech in it (no-speech probability "
                                        "0.95") and "music or another sound" in str(caught.value)


def test_the_threshold_rises_as_the_window_holds_less_sound():
    """Whisper's no-speech probability of real speech rises as the speech gets shorter (exp47), so a window with
    1 s of sound is refused at 0.8, not 0.6; whole clips (3 s and more) keep 0.6."""
    from ser.predict import SERPredictor, no_speech_threshold

    assert no_speech_threshold(None) == no_speech_threshold(3.0) == no_speech_threshold(10.0) == NO_SPEECH_THRESHOLD
    assert no_speech_threshold(1.0) == pytest.approx(0.8) and no_speech_threshold(2.0) == pytest.approx(0.7)
    assert no_speech_threshold(0.5) == no_speech_threshold(0.1) == pytest.approx(0.85)
    lengths = np.linspace(0, 4, 41)
    assert np.all(np.diff([no_speech_threshold(x) for x in lengths]) <= 0)

    class Features:  # what the encoder sees: the waveform's non-zero part (a trim), at 16 kHz
        sample_rate = 16_000

        def prepare(self, y):
            return y[np.flatnonzero(y)[0]:np.flatnonzero(y)[-1] + 1]

    predictor = object.__new__(SERPredictor)
    predictor.members, predictor.features = [], Features()
    predictor.window_outputs = lambda ws: (np.eye(7)[[1] * len(ws)], [0.75] * len(ws))
    short = np.concatenate([np.zeros(16_000), np.ones(16_000), np.zeros(16_000)]).astype(np.float32)  # 1 s of sound
    whole = np.ones(48_000, np.float32)
    assert predictor.sound_seconds(short) == 1.0 and predictor.sound_seconds(whole) == 3.0
    kept, refused = predictor.window_results([short, whole], source="talk.wav")
    assert isinstance(kept, np.ndarray) and isinstance(refused, NoSpeechError)
    assert "speech < 0.60 for 3.0 s of sound" in str(refused)


def test_the_live_stream_batch_says_no_speech_for_a_window_whisper_refuses():
    from webapp.models import Models

    class Voice:
        class_names = ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]

        def speech_segments(self, y, sr):
            return [(0.0, 1.0, y), (1.0, 2.0, y * 0.5)]

        def window_results(self, waveforms):
            if float(np.max(waveforms[0])) > 1.5:  # the "music" window: every part refused
                return [NoSpeechError("audio: no speech: music", "other sound", 0.8),
                        NoSpeechError("audio: no speech: music", "other sound", 0.9)]
            return [np.eye(7)[1], NoSpeechError("audio: no speech: a part", "other sound", 0.6)]

    voice = Voice()
    models = Models(ser=voice)
    speech, music = models.predict_voice_batch([np.ones(100, np.float32)], 16_000)[0], None
    assert max(speech, key=speech.get) == "happy"  # the refused part does not count, the other decides
    music = models.predict_voice_batch([2 * np.ones(100, np.float32)], 16_000)[0]
    assert isinstance(music, NoSpeechError) and music.no_speech_probability == 0.9


@pytest.fixture(scope="module")
def shipped_ser():
    from ser.predict import DEFAULT_MODEL_DIR, SERPredictor

    if not (DEFAULT_MODEL_DIR / "model.keras").is_file():
        pytest.skip("saved_models/ser is not in this checkout")
    return SERPredictor(DEFAULT_MODEL_DIR)


def test_the_shipped_model_refuses_a_melody_the_signal_check_lets_through(shipped_ser):
    from ser.frontend import speech_check

    melody = synth.piano_melody(0)
    assert speech_check(melody, 16_000).is_speech  # what the signal check alone would have given an emotion
    with pytest.raises(NoSpeechError) as caught:
        shipped_ser.predict_waveform(melody, 16_000)
    assert caught.value.reason == "other sound" and caught.value.no_speech_probability >= NO_SPEECH_THRESHOLD


def test_the_shipped_model_keeps_real_speech_also_in_noise(shipped_ser, shared_data):
    """One clip per RAVDESS actor, as recorded and over white noise at 10 dB SNR (the signal check's own real-data
    case): Whisper must hear speech in every one."""
    from ser.audio import load_audio
    from ser.frontend import active_rms

    rng = np.random.default_rng(0)
    clips = [sorted((shared_data / "ravdess" / f"Actor_{a:02d}").glob("*"))[(11 * a) % 60] for a in range(1, 21)]
    waveforms = []
    for path in clips:
        y = load_audio(path)
        waveforms += [y, y + (rng.standard_normal(y.size) * active_rms(y) * 10 ** (-10 / 20)).astype(np.float32)]
    _, heard = shipped_ser.window_outputs(waveforms)
    assert all(q is not None and q < NO_SPEECH_THRESHOLD for q in heard), max(heard)
