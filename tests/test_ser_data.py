from collections import Counter

import numpy as np
import pytest

from ser import audio
from ser.corpora import load_clips, parse_corpus_list
from ser.dataset import split_clips
from ser.features import (NOISE_SNR_DB, PHONE_VARIANT, FeatureConfig, Normalizer, add_noise, extract_many,
                          frames_from_waveform, noise_variant, pad, phone_band)
from tests import synth_audio as synth


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    synth.make_ravdess(root, actors=4)
    synth.make_tess(root)
    synth.make_crema_d(root)
    synth.make_savee(root)
    defects = synth.add_defects(root / "ravdess")
    return root, defects


def test_ravdess_parser_maps_calm_to_neutral_and_reads_actor(corpora):
    root, defects = corpora
    clips, report = load_clips(["ravdess"], root)
    assert report["ravdess"]["kept"] == len(clips) == 4 * 8 + len(defects)
    by_name = {c.path.rsplit("/", 1)[1]: c for c in clips}
    assert by_name["03-01-02-01-01-01-03.wav"].label == "neutral"
    assert by_name["03-01-08-01-01-01-03.wav"].label == "surprise"
    assert by_name["03-01-02-01-01-01-03.wav"].speaker == "ravdess_03"


def test_ravdess_parser_skips_foreign_names_and_dedupes_nested_copies(tmp_path):
    synth.make_ravdess(tmp_path, actors=1)
    nested = tmp_path / "ravdess" / "audio_speech_actors_01-24" / "Actor_01"
    nested.mkdir(parents=True)
    for f in (tmp_path / "ravdess" / "Actor_01").iterdir():
        (nested / f.name).write_bytes(f.read_bytes())
    (tmp_path / "ravdess" / "Actor_01" / "notes.wav").write_bytes(b"x")
    clips, report = load_clips(["ravdess"], tmp_path)
    assert len(clips) == 8
    assert sum(report["ravdess"]["skipped"].values()) == 1


def test_tess_parser_reads_suffix_and_speaker(corpora):
    root, _ = corpora
    clips, _ = load_clips(["tess"], root)
    assert Counter(c.speaker for c in clips) == {"tess_OAF": 14, "tess_YAF": 14}
    assert Counter(c.label for c in clips)["surprise"] == 4
    assert {c.label for c in clips if c.path.endswith("_ps.wav")} == {"surprise"}


def test_tess_typo_prefix_still_belongs_to_oaf(tmp_path):
    synth.write(tmp_path / "tess" / "OAF_neutral" / "OA_bite_neutral.wav", synth.tone("neutral"))
    clips, _ = load_clips(["tess"], tmp_path)
    assert [(c.speaker, c.label) for c in clips] == [("tess_OAF", "neutral")]


def test_crema_d_and_savee_parsers(corpora):
    root, _ = corpora
    crema, _ = load_clips(["crema_d"], root)
    assert len(crema) == 18 and {c.speaker for c in crema} == {"crema_d_1001", "crema_d_1002", "crema_d_1003"}
    assert {c.label for c in crema if "_ANG_" in c.path} == {"angry"}
    savee, _ = load_clips(["savee"], root)
    assert len(savee) == 21
    assert {c.label for c in savee if c.path.endswith("_sa01.wav")} == {"sad"}
    assert {c.label for c in savee if c.path.endswith("_su01.wav")} == {"surprise"}


def test_corpora_combine_and_unknown_names_are_rejected(corpora):
    root, _ = corpora
    assert parse_corpus_list("ravdess, CREMA-D") == ["ravdess", "crema_d"]
    with pytest.raises(ValueError, match="iemocap"):
        parse_corpus_list("ravdess,iemocap")
    # a corpus named twice (or by an alias) is loaded once: twice put every clip in training and test twice
    assert parse_corpus_list("ravdess,RAVDESS, crema-d,crema_d") == ["ravdess", "crema_d"]
    for empty in ("", " , "):
        with pytest.raises(ValueError, match="no corpus named"):
            parse_corpus_list(empty)
    clips, reports = load_clips(["ravdess", "tess"], root)
    assert set(reports) == {"ravdess", "tess"} and {c.corpus for c in clips} == {"ravdess", "tess"}


def test_missing_corpus_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no clips found"):
        load_clips(["savee"], tmp_path)


def test_audio_defects_each_give_a_specific_error_or_load(corpora):
    _, defects = corpora
    with pytest.raises(audio.CorruptAudioError, match="not readable"):
        audio.load_audio(defects["corrupt"])
    with pytest.raises(audio.EmptyAudioError):
        audio.load_audio(defects["empty"])
    with pytest.raises(audio.SilentAudioError, match="silent"):
        audio.load_audio(defects["silent"])
    for name in ("stereo", "aiff_as_wav", "hi_rate"):
        y = audio.load_audio(defects[name])
        assert y.ndim == 1 and abs(len(y) - 16_000) < 50, name


def test_the_head_of_a_long_recording_is_the_start_of_the_whole(tmp_path):
    """decode_head gives the same samples as decode for the stretch it reads and the whole file's length, from
    libsndfile (wav) and from FFmpeg (m4a)."""
    import soundfile

    from tests.synth_video import write_audio_only_mp4

    y = (0.3 * np.sin(2 * np.pi * 220 * np.arange(10 * 16_000) / 16_000)).astype(np.float32)
    wav = tmp_path / "long.wav"
    soundfile.write(wav, np.stack([y, 0.5 * y], axis=1), 16_000)  # stereo: the mean of the channels
    for path in (wav, write_audio_only_mp4(tmp_path / "long.m4a", y)):
        whole, rate = audio.decode(path)
        head, head_rate, seconds = audio.decode_head(path, max_seconds=2.5)
        assert head_rate == rate and head.size == int(2.5 * rate)
        np.testing.assert_array_equal(head, whole[: head.size])
        assert seconds == pytest.approx(10.0, abs=0.1), path.suffix
    np.testing.assert_allclose(audio.decode(wav)[0], 0.75 * y, atol=1e-4)


def test_non_audio_file_is_rejected(tmp_path):
    path = tmp_path / "photo.wav"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(audio.AudioError):
        audio.load_audio(path)


def test_feature_shapes_and_padding():
    cfg = FeatureConfig(max_seconds=1.0)
    feats = frames_from_waveform(synth.tone("happy", seconds=2.0), cfg)
    assert feats.shape == (cfg.max_frames, 42)
    short = frames_from_waveform(synth.tone("happy", seconds=0.3), cfg)
    x, lengths = pad([feats, short], cfg.max_frames)
    assert x.shape == (2, cfg.max_frames, 42) and lengths[1] == len(short) < cfg.max_frames
    assert not x[1, lengths[1]:].any()
    deltas = FeatureConfig(max_seconds=1.0, deltas=True)
    assert frames_from_waveform(synth.tone("sad"), deltas).shape[1] == deltas.n_features == 126


def test_logmel_features_follow_the_spectrum_and_keep_mfcc_cache_keys():
    cfg = FeatureConfig(max_seconds=1.0, kind="logmel", n_mels=32)
    sr = cfg.sample_rate
    t = np.arange(sr) / sr
    low = frames_from_waveform((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), cfg)
    high = frames_from_waveform((0.3 * np.sin(2 * np.pi * 4000 * t)).astype(np.float32), cfg)
    assert low.shape == (cfg.max_frames, 32) == (cfg.max_frames, cfg.n_features)
    assert np.argmax(low.mean(axis=0)) < np.argmax(high.mean(axis=0))  # the energy moves up the mel bands
    assert FeatureConfig().key() != FeatureConfig(kind="logmel").key()
    assert FeatureConfig().key() == FeatureConfig(n_mels=32).key()  # n_mels is ignored for MFCC
    with pytest.raises(ValueError, match="logmel"):
        FeatureConfig(kind="cqt")


def test_pitch_features_track_f0_absolute_and_relative_to_the_clip():
    cfg = FeatureConfig(max_seconds=1.0, pitch=True)
    sr = cfg.sample_rate
    t = np.arange(sr) / sr
    steady = frames_from_waveform((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), cfg)
    assert steady.shape == (cfg.max_frames, 44) == (cfg.max_frames, cfg.n_features)
    assert np.median(steady[:, 42]) == pytest.approx(12.0, abs=0.3)  # 200 Hz is an octave above 100 Hz
    assert np.abs(steady[:, 43]).max() < 0.5                           # no intonation in a steady tone
    hz = np.geomspace(150, 300, sr)                                   # one octave up over the clip
    rising = frames_from_waveform((0.3 * np.sin(2 * np.pi * np.cumsum(hz) / sr)).astype(np.float32), cfg)
    first, last = 5, len(rising) - 5
    expected = 12 * np.log2(hz[last * cfg.hop_length] / hz[first * cfg.hop_length])
    assert rising[last, 43] - rising[first, 43] == pytest.approx(expected, abs=1.0)
    plain = frames_from_waveform((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), FeatureConfig(max_seconds=1.0))
    assert np.allclose(steady[:, :42], plain)                          # the first 42 columns are unchanged
    assert FeatureConfig().key() != cfg.key()
    with pytest.raises(ValueError, match="pitch"):
        FeatureConfig(kind="logmel", pitch=True)


def test_normalizer_uses_valid_frames_only(tmp_path):
    x = np.zeros((2, 4, 1), np.float32)
    x[0, :2, 0] = [1, 3]
    x[1, :2, 0] = [5, 7]
    norm = Normalizer.fit(x, np.array([2, 2]))
    assert norm.mean[0] == pytest.approx(4.0)
    out = norm.transform(x, np.array([2, 2]))
    assert not out[:, 2:].any()
    norm.save(tmp_path / "n.npz")
    assert Normalizer.load(tmp_path / "n.npz").std[0] == pytest.approx(norm.std[0])


def test_bulk_extraction_skips_and_counts_bad_files_and_caches(corpora, tmp_path):
    root, defects = corpora
    clips, _ = load_clips(["ravdess"], root)
    paths = [c.path for c in clips]
    cfg = FeatureConfig(max_seconds=1.0)
    feats, errors = extract_many(paths, cfg, tmp_path / "cache", n_jobs=2)
    assert set(errors) == {str(defects[k]) for k in ("corrupt", "empty", "silent")}
    assert sum(f is not None for f in feats) == len(paths) - 3
    cached = list((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == len(paths) - 3
    again, _ = extract_many(paths, cfg, tmp_path / "cache", n_jobs=1)
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(feats, again))
    augmented, _ = extract_many(paths[:2], cfg, tmp_path / "cache", variant=1, n_jobs=1)
    # time stretch may change the length; either way the augmented copy must differ
    assert augmented[0].shape != feats[0].shape or not np.allclose(augmented[0], feats[0])
    # another seed gives another augmented copy, not the cached one of the first seed
    reseeded, _ = extract_many(paths[:2], cfg, tmp_path / "cache", variant=1, seed=1, n_jobs=1)
    uncached, _ = extract_many(paths[:2], cfg, None, variant=1, seed=1, n_jobs=1)
    assert all(np.array_equal(a, b) for a, b in zip(reseeded, uncached))
    assert any(a.shape != b.shape or not np.allclose(a, b) for a, b in zip(reseeded, augmented))


def test_noise_copy_is_white_noise_in_its_snr_range_over_the_untouched_voice():
    voice = synth.tone("sad", seconds=2.0)
    snrs = []
    for seed in range(40):
        noisy = add_noise(voice, np.random.default_rng(seed))
        assert noisy.dtype == np.float32 and noisy.shape == voice.shape
        noise = noisy.astype(np.float64) - voice
        snrs.append(10 * np.log10(np.mean(voice.astype(np.float64) ** 2) / np.mean(noise ** 2)))
        spectrum = np.abs(np.fft.rfft(noise)) ** 2
        low, high = spectrum[1: len(spectrum) // 2].mean(), spectrum[len(spectrum) // 2:].mean()
        assert 0.8 < low / high < 1.25  # white: as much power in the upper half of the band as in the lower
    assert NOISE_SNR_DB[0] - 0.2 < min(snrs) and max(snrs) < NOISE_SNR_DB[1] + 0.2
    assert max(snrs) - min(snrs) > 10  # drawn across the range, not one level


def test_noise_and_music_copies_are_reproducible_and_cached_apart_from_augmented_copies(corpora, tmp_path):
    from ser.features import music_variant

    root, _ = corpora
    clips, _ = load_clips(["ravdess"], root)
    paths = [c.path for c in clips][:2]
    cfg = FeatureConfig(max_seconds=1.0)
    clean, _ = extract_many(paths, cfg, tmp_path / "cache", n_jobs=1)
    noisy, _ = extract_many(paths, cfg, tmp_path / "cache", variant=noise_variant(1), n_jobs=1)
    augmented, _ = extract_many(paths, cfg, tmp_path / "cache", variant=1, n_jobs=1)
    uncached, _ = extract_many(paths, cfg, None, variant=noise_variant(1), n_jobs=1)
    second, _ = extract_many(paths, cfg, tmp_path / "cache", variant=noise_variant(2), n_jobs=1)
    for c, n, a, u, s in zip(clean, noisy, augmented, uncached, second):
        assert n.shape == c.shape and not np.allclose(n, c)  # same length (nothing stretched), other numbers
        assert a.shape != n.shape or not np.allclose(a, n)  # not the augmented copy's cache entry
        np.testing.assert_array_equal(n, u)
        assert not np.allclose(s, n)
    phone, _ = extract_many(paths, cfg, tmp_path / "cache", variant=PHONE_VARIANT, n_jobs=1)
    assert all(p.shape == c.shape and not np.allclose(p, c) for p, c in zip(phone, clean))
    music, _ = extract_many(paths, cfg, tmp_path / "cache", variant=music_variant(1), n_jobs=1)
    music_uncached, _ = extract_many(paths, cfg, None, variant=music_variant(1), n_jobs=1)
    for c, n, m, u in zip(clean, noisy, music, music_uncached):
        assert m.shape == c.shape and not np.allclose(m, c) and not np.allclose(m, n)  # its own cache entry
        np.testing.assert_array_equal(m, u)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 6 * len(paths)


def test_short_copies_are_stretches_of_the_speech_cached_apart(corpora, tmp_path):
    """``speech_stretch``: a stretch of the trimmed speech of the length asked (central without a generator, random
    and reproducible with one); a clip's short copy ("crop1") is its own cache entry, never longer than the clip."""
    from ser.features import CROP_SECONDS, crop_variant, speech_stretch

    sr = 16_000
    voice = synth.tone("sad", seconds=2.0)
    y = np.concatenate([np.zeros(sr), voice, np.zeros(sr)]).astype(np.float32)  # 1 s of silence either side
    centre = speech_stretch(y, sr, 1.0)
    start = int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(y, centre.size) == centre, axis=1))[0])
    assert centre.size == sr and abs(start - 1.5 * sr) < 0.05 * sr  # the middle second of the speech
    starts = set()
    for seed in range(20):
        part = speech_stretch(y, sr, 0.8, np.random.default_rng(seed))
        assert part.size == int(0.8 * sr)
        starts.add(int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(y, part.size) == part,
                                             axis=1))[0]))
        np.testing.assert_array_equal(part, speech_stretch(y, sr, 0.8, np.random.default_rng(seed)))
    assert len(starts) > 10 and min(starts) >= 0.95 * sr and max(starts) + 0.8 * sr <= 3.05 * sr  # inside the speech
    assert speech_stretch(y, sr, 5.0).size < 2.2 * sr  # longer than the speech: all of the speech, no silence
    root, _ = corpora
    clips, _ = load_clips(["ravdess"], root)
    paths = [c.path for c in clips][:2]
    cfg = FeatureConfig()
    clean, _ = extract_many(paths, cfg, tmp_path / "cache", n_jobs=1)
    short, _ = extract_many(paths, cfg, tmp_path / "cache", variant=crop_variant(1), n_jobs=1)
    again, _ = extract_many(paths, cfg, None, variant=crop_variant(1), n_jobs=1)
    for c, s, a in zip(clean, short, again):
        # the fixtures hold about 1 s of speech: a copy is at most all of it
        assert s.shape[0] <= min(c.shape[0], CROP_SECONDS[1] * cfg.sample_rate / cfg.hop_length + 2)
        np.testing.assert_array_equal(s, a)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2 * len(paths)


def test_music_copy_puts_harmonic_music_with_a_beat_under_the_untouched_voice_in_its_snr_range():
    from ser.features import MUSIC_SNR_DB, add_music, synthetic_music
    from ser.frontend import active_rms

    sr = 16_000
    music = synthetic_music(3 * sr, sr, np.random.default_rng(0))
    assert music.dtype == np.float32 and np.sqrt(np.mean(music.astype(np.float64) ** 2)) == pytest.approx(1, rel=1e-3)
    np.testing.assert_array_equal(music, synthetic_music(3 * sr, sr, np.random.default_rng(0)))
    spectrum = np.abs(np.fft.rfft(music)) ** 2
    top = np.sort(spectrum)[::-1]
    assert top[:200].sum() > 0.5 * spectrum.sum()  # tones: a few partials hold most of the power, unlike noise
    energy = np.convolve(music.astype(np.float64) ** 2, np.ones(160) / 160, mode="valid")[::160]
    assert energy.max() > 3 * np.median(energy)  # onsets (steady noise or a held tone: about 1)
    voice = synth.tone("happy", seconds=2.0)
    snrs = []
    for seed in range(30):
        mixed = add_music(voice, sr, np.random.default_rng(seed))
        assert mixed.dtype == np.float32 and mixed.shape == voice.shape
        snrs.append(20 * np.log10(active_rms(voice.astype(np.float64))
                                  / active_rms(mixed.astype(np.float64) - voice)))
    assert MUSIC_SNR_DB[0] - 0.2 < min(snrs) and max(snrs) < MUSIC_SNR_DB[1] + 0.2
    assert max(snrs) - min(snrs) > 7  # drawn across the range, not one level


def test_phone_band_keeps_speech_below_4_khz_and_removes_what_is_above():
    sr = 16_000
    t = np.arange(sr) / sr
    low, high = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 6000 * t)
    out = phone_band((low + high).astype(np.float32), sr)
    assert out.dtype == np.float32 and out.shape == t.shape
    spectrum = np.abs(np.fft.rfft(out[1000:-1000])) / (len(t) - 2000)
    freqs = np.fft.rfftfreq(len(t) - 2000, 1 / sr)
    at = lambda hz: spectrum[np.argmin(np.abs(freqs - hz))]
    assert at(1000) > 0.45 and at(6000) < 1e-3  # a 1 kHz tone passes (amplitude 0.5 per side); 6 kHz is gone


def test_speaker_split_holds_out_whole_speakers_per_corpus(corpora):
    root, _ = corpora
    clips, _ = load_clips(["ravdess", "tess"], root)
    splits = split_clips(clips, "speaker", 0.25, 0.25, seed=0)
    by_speaker = {}
    for c, s in zip(clips, splits):
        by_speaker.setdefault(c.speaker, set()).add(s)
    assert all(len(v) == 1 for v in by_speaker.values())
    assert by_speaker["tess_OAF"] == by_speaker["tess_YAF"] == {"train"}
    assert {"val", "test"} <= set.union(*(v for k, v in by_speaker.items() if k.startswith("ravdess")))
    named = split_clips(clips, "speaker", 0.25, 0.25, 0, val_speakers=["ravdess_01"], test_speakers=["tess_YAF"])
    assert {s for c, s in zip(clips, named) if c.speaker == "tess_YAF"} == {"test"}
    assert {s for c, s in zip(clips, named) if c.speaker == "ravdess_01"} == {"val"}


def test_audio_in_an_encoding_without_a_decoder_names_that(tmp_path):
    # A valid WAV header announcing 36-bit PCM: libsndfile refuses it and FFmpeg parses it without a decoder.
    import struct

    data = bytes(5 * 5)
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 8000 * 5, 5, 36)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path = tmp_path / "deep.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(audio.CorruptAudioError, match="no decoder for its audio encoding"):
        audio.load_audio(path)


def test_a_file_that_decodes_to_nothing_says_so(tmp_path):
    """A header without samples (as a truncated download can be) is not 'only 0 samples'."""
    import soundfile as sf

    sf.write(tmp_path / "header_only.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(audio.EmptyAudioError, match="no audio could be decoded .*truncated or damaged"):
        audio.load_audio(tmp_path / "header_only.wav")
    sf.write(tmp_path / "blip.wav", np.full(100, 0.1, np.float32), 16000)
    with pytest.raises(audio.EmptyAudioError, match="only 100 samples .*10 ms"):
        audio.load_audio(tmp_path / "blip.wav")


def test_a_file_cut_short_is_refused_not_judged_on_its_start(tmp_path):
    """Decoders stop quietly where a cut-short file ends; the length its header declares says it was cut."""
    import soundfile as sf

    from tests.synth_video import write_audio_only_mp4

    y = synth.tone("happy", seconds=4.0)
    sf.write(tmp_path / "whole.wav", y, 16000)
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 3])
    assert audio.decode(tmp_path / "whole.wav")[0].size == y.size
    with pytest.raises(audio.CorruptAudioError, match=r"truncated or damaged: 1\.33 s of the 4\.00 s its header"):
        audio.load_audio(tmp_path / "cut.wav")
    # A short file that is whole: nothing to say.
    sf.write(tmp_path / "short.wav", y[: y.size // 3], 16000)
    assert audio.decode(tmp_path / "short.wav")[0].size == y.size // 3
    # FFmpeg's containers: an mp4 that ends early, and a FLAC that breaks off mid-frame.
    import av

    write_audio_only_mp4(tmp_path / "moov_last.mp4", y)
    with av.open(str(tmp_path / "moov_last.mp4")) as src, \
            av.open(str(tmp_path / "memo.mp4"), "w", format="mp4", options={"movflags": "+faststart"}) as dst:
        track = dst.add_stream_from_template(src.streams.audio[0])  # the header first, as a streamed download has it
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = track
                dst.mux(packet)
    memo = (tmp_path / "memo.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(memo[: len(memo) // 3])
    with pytest.raises(audio.CorruptAudioError, match=r"truncated or damaged(, after \d\.\d\d s|: \d\.\d\d s of)"):
        audio.load_audio(tmp_path / "cut.mp4")
    assert audio.decode(tmp_path / "memo.mp4")[0].size >= y.size
    sf.write(tmp_path / "whole.flac", y, 16000)
    flac = (tmp_path / "whole.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(flac[: len(flac) // 3])
    with pytest.raises(audio.CorruptAudioError, match=r"truncated or damaged(, after \d\.\d\d s|: \d\.\d\d s of)"):
        audio.load_audio(tmp_path / "cut.flac")


def _write_mp3(path, y, sr=16000, **options):
    import av

    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libmp3lame", rate=sr, layout="mono")
        frame = av.AudioFrame.from_ndarray(y[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def test_an_mp3_cut_short_is_refused_when_its_header_counts_its_frames(tmp_path):
    """An encoder's Xing / Info header states an MP3's frame count; without one the length is only an estimate from
    the file's size, so a cut file cannot be told from a short one (and is read as far as it goes)."""
    from core.media_types import mp3_declares_length

    y = synth.tone("happy", seconds=6.0)
    for name, options in (("counted", {}), ("uncounted", {"write_xing": "0"})):
        _write_mp3(tmp_path / f"{name}.mp3", y, **options)
        data = (tmp_path / f"{name}.mp3").read_bytes()
        (tmp_path / f"{name}_cut.mp3").write_bytes(data[: len(data) // 3])
        assert abs(audio.decode(tmp_path / f"{name}.mp3")[0].size / 16000 - 6.0) < 0.2
    assert mp3_declares_length(tmp_path / "counted.mp3") and not mp3_declares_length(tmp_path / "uncounted.mp3")
    with pytest.raises(audio.CorruptAudioError, match=r"truncated or damaged: 1\.\d\d s of the 6\.00 s its header"):
        audio.load_audio(tmp_path / "counted_cut.mp3")
    assert audio.decode(tmp_path / "uncounted_cut.mp3")[0].size / 16000 < 2.5
    # A head read that stops before the cut is the file's true start: nothing to refuse.
    samples, rate, seconds = audio.decode_head(tmp_path / "counted_cut.mp3", max_seconds=1.0)
    assert samples.size == rate and seconds == pytest.approx(6.0, abs=0.01)


def test_linked_folders_are_searched_once_each(tmp_path):
    """A corpus assembled from links to actor folders elsewhere was empty to the loaders (Path.rglob and os.walk do
    not follow links); a link back up the tree must not loop."""
    import os

    from core.media_types import files_below
    from fer.data import list_images
    from ser.corpora import audio_files

    elsewhere = tmp_path / "disk" / "Actor_01"
    elsewhere.mkdir(parents=True)
    (elsewhere / "03-01-05-01-01-01-01.wav").write_bytes(b"")
    (elsewhere / "face.png").write_bytes(b"")
    (elsewhere / ".hidden.wav").write_bytes(b"")
    corpus = tmp_path / "ravdess"
    corpus.mkdir()
    os.symlink(elsewhere, corpus / "Actor_01")
    os.symlink(corpus, elsewhere / "back_up")  # a cycle
    assert audio_files(corpus) == [corpus / "Actor_01" / "03-01-05-01-01-01-01.wav"]
    assert list_images(corpus) == [corpus / "Actor_01" / "face.png"]
    assert files_below(corpus, (".mp4",)) == []
