"""A video's audio track as 16 kHz mono samples (PyAV decodes and resamples)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cliptool.errors import VideoError, one_line, printable

RATE = 16_000  # what every speech engine here takes


def read_audio(path: Path, stream_index: int = 0) -> np.ndarray | None:
    """The audio track of `path` (its first one, or `stream_index`) as float32 mono samples at
    16 kHz, from the start of the file's timeline; None when the file has no audio track.
    Raises VideoError (one line) when the file cannot be opened or its audio decoded."""
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - PyAV raises many kinds for a bad file
        raise VideoError(f"{printable(str(path))}: cannot open: {one_line(exc)}") from None
    with container:
        streams = container.streams.audio
        if len(streams) <= stream_index:
            return None
        stream = streams[stream_index]
        stream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        chunks: list[np.ndarray] = []
        start = None
        try:
            for frame in container.decode(stream):
                if start is None and frame.time is not None:
                    start = max(0.0, float(frame.time))
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except Exception as exc:  # noqa: BLE001 - a corrupt packet ends the track here
            if not chunks:
                raise VideoError(f"{printable(str(path))}: cannot decode audio: {one_line(exc)}") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    lead = np.zeros(int(round((start or 0.0) * RATE)), np.int16)  # a track that starts late keeps its times
    return np.concatenate([lead, samples]).astype(np.float32) / 32768.0


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as little-endian 16-bit PCM bytes (what pocketsphinx reads)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
