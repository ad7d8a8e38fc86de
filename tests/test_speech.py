"""Speech to timed words (cliptool.analysis.words.speech) on clips made here: sentences said by
Festival at known times between another voice's, over low noise; music; silence; no audio."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import data_module
from cliptool.analysis.words.audio import RATE, read_audio
from cliptool.analysis.words.speech import transcribe
from cliptool.analysis.words.vad import voiced_regions
from cliptool.errors import ModelUnavailableError, UsageError, VideoError

tv = data_module("talking_videos")
needs_engine = pytest.mark.skipif(
    not tv.festival_available() or importlib.util.find_spec("pocketsphinx") is None,
    reason="needs Festival with the us-slt-hts voice and pocketsphinx (make install-tools)")


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The test clips, made once: three sentences with another voice between, music then
    silence, and a video without an audio track."""
    if not tv.festival_available():
        pytest.skip("needs Festival with the us-slt-hts voice (make install-tools)")
    root = tmp_path_factory.mktemp("talking")
    cache = root / "speech-cache"
    talk = tv.talking_clip(root / "talk.mp4", tv.SENTENCES[:3], cache, gap=1.0, lead=1.0)
    quiet = np.concatenate([tv.music(6.0), np.zeros(4 * tv.RATE, np.float32)])
    tv.write_clip(root / "music.mp4", 10.0, quiet)
    tv.write_clip(root / "mute.mp4", 2.0, None)
    return {"talk": talk, "music": root / "music.mp4", "mute": root / "mute.mp4", "cache": cache}


def said_in(words: list, said, slack: float = 1.0) -> bool:
    """Whether most (2 of 3) of the sentence's key words were heard within `slack` s of it."""
    heard = {w.text.lower() for w in words if said.start - slack <= w.start <= said.end + slack}
    keys = tv.key_words(said.text)
    return sum(k in heard for k in keys) * 3 >= 2 * len(keys)


@needs_engine
def test_sentences_are_heard_at_their_times(clips: dict) -> None:
    talk = clips["talk"]
    words = transcribe(talk.path)
    assert words and all(w.source == "speech" and w.language == "en" for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert all(0 <= w.start <= w.end <= talk.seconds + 0.5 for w in words)
    targets = [s for s in talk.said if s.target]
    found = [said_in(words, s) for s in targets]
    assert found[0] and sum(found) >= 2, (found, [(w.start, w.text) for w in words])
    # the first sentence's words are heard only where it was said, not elsewhere in the clip
    first = targets[0]
    for w in words:
        if w.text in ("weather", "today"):
            assert first.start - 1 <= w.start <= first.end + 1, w


@needs_engine
def test_the_detector_passes_speech_and_skips_the_pauses(clips: dict) -> None:
    talk = clips["talk"]
    samples = read_audio(talk.path)
    regions = voiced_regions(samples, RATE)
    for s in talk.said:  # every sentence, either voice, lies in a region
        assert any(a - 0.1 <= s.start and s.end <= b + 0.1 for a, b in regions), (s, regions)
    voiced = sum(b - a for a, b in regions)
    spoken = sum(s.end - s.start for s in talk.said)
    assert voiced < spoken + 0.6 * len(talk.said) + 1.0  # the pauses between sentences are skipped
    assert voiced < 0.8 * talk.seconds


@needs_engine
def test_music_and_silence_give_no_words(clips: dict) -> None:
    samples = read_audio(clips["music"])
    assert samples is not None and len(samples) == pytest.approx(10 * RATE, abs=RATE // 10)
    assert float(np.abs(samples[: 6 * RATE]).max()) > 0.05  # the music is there
    assert voiced_regions(samples, RATE) == []  # the detector sends nothing to the recogniser
    assert transcribe(clips["music"]) == []


@needs_engine
def test_a_file_without_audio_gives_nothing(clips: dict) -> None:
    assert read_audio(clips["mute"]) is None
    assert transcribe(clips["mute"]) == []


def test_errors_are_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "not-a-video.mp4"
    fake.write_text("this is text, not a video\n")
    with pytest.raises(VideoError) as bad:
        read_audio(fake)
    assert "not-a-video.mp4" in str(bad.value) and "\n" not in str(bad.value)
    with pytest.raises(UsageError) as unknown:
        transcribe(fake, engine="dragon")
    assert "pocketsphinx" in str(unknown.value) and "\n" not in str(unknown.value)


@pytest.mark.skipif(importlib.util.find_spec("faster_whisper") is None, reason="needs faster-whisper")
def test_whisper_without_its_model_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       network: list) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # an empty cache
    clip = tmp_path / "mute.mp4"
    tv.write_clip(clip, 1.0, None)

    def error(model: str) -> str:
        with pytest.raises(ModelUnavailableError) as err:
            transcribe(clip, engine="whisper", model=model)
        assert "\n" not in str(err.value), str(err.value)
        return str(err.value)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = error("tiny")
    assert "'tiny'" in message and "HF_HUB_OFFLINE" in message and "Systran/faster-whisper-tiny" in message
    assert network == []  # HF_HUB_OFFLINE: the network is not even asked
    monkeypatch.delenv("HF_HUB_OFFLINE")
    message = error("tiny")  # no network here: the hub cannot be reached
    assert "cannot be reached" in message and "--model" in message
    assert "no-such-folder" in error(str(tmp_path / "no-such-folder"))
    assert "model.bin" in error(str(tmp_path))  # a folder that is not a model


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("faster_whisper", "transformers", "torch")),
                    reason="needs faster-whisper, transformers and torch")
@needs_engine
def test_whisper_runs_on_a_model_folder(clips: dict, tmp_path: Path, network: list) -> None:
    """The whisper path end to end on a tiny random-weight model made here (data/tiny_whisper.py,
    in a child process): words come back as Words, at times inside what the detector passed."""
    import subprocess
    import sys

    from conftest import REPO

    folder = tmp_path / "tiny-whisper"
    subprocess.run([sys.executable, str(REPO / "data" / "tiny_whisper.py"), str(folder)], check=True,
                   capture_output=True, timeout=600)
    clip = tmp_path / "one-sentence.mp4"  # one sentence: the random model talks until its token limit
    audio, _ = tv.mix_speech(4.0, [(tv.SENTENCES[0], 1.0, True)], tv.noise(4.0), clips["cache"])
    tv.write_clip(clip, 4.0, audio)
    regions = voiced_regions(read_audio(clip), RATE)
    assert len(regions) == 1
    import ctranslate2

    ctranslate2.set_random_seed(1)  # faster-whisper falls back to sampling when a reading is unlikely: always, here
    words = transcribe(clip, engine="whisper", model=str(folder), language="en")
    assert words, "the random model says something in every region"
    for w in words:
        assert w.source == "speech" and w.language == "en" and 0.0 <= w.confidence <= 1.0
        assert any(a - 0.05 <= w.start <= w.end <= b + 0.05 for a, b in regions), (w, regions)
    assert network == []  # a model folder: nothing asked of the network
    assert transcribe(clips["music"], engine="whisper", model=str(folder)) == []
