"""Reading audio windows: only the samples a batch needs are read and decoded."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile


class AudioReadError(RuntimeError):
    """Audio that cannot be read as expected; the message names the file."""


def read_audio(path: Union[str, Path], start: int = 0, num_samples: Optional[int] = None,
               expected_sample_rate: Optional[int] = 16000) -> np.ndarray:
    """Read a window of an audio file as float32 mono.

    Seeks to ``start`` and decodes only ``num_samples`` samples, so a crop costs what it keeps.

    Args:
        path: audio file (any format libsndfile reads).
        start: first sample of the window.
        num_samples: window length; ``None`` reads to the end of the file.
        expected_sample_rate: required sample rate, or ``None`` to accept any.

    Returns:
        Samples, shape ``(sample,)``, float32 in [-1, 1].

    Raises:
        AudioReadError: the file is missing or undecodable, has another sample rate, has more than
            one channel, or is shorter than the requested window.
    """
    path = Path(path)
    try:
        with soundfile.SoundFile(str(path)) as audio:
            if expected_sample_rate is not None and audio.samplerate != expected_sample_rate:
                raise AudioReadError(
                    f"{path}: sample rate {audio.samplerate} Hz, expected {expected_sample_rate} Hz")
            if audio.channels != 1:
                raise AudioReadError(f"{path}: {audio.channels} channels, expected mono")
            available = audio.frames - start
            wanted = available if num_samples is None else num_samples
            if start < 0 or wanted < 0 or wanted > available:
                raise AudioReadError(
                    f"{path}: cannot read samples [{start}, {start + wanted}) of a file with {audio.frames}")
            if start:
                audio.seek(start)
            samples = audio.read(wanted, dtype="float32", always_2d=False)
    except AudioReadError:
        raise
    except Exception as error:  # libsndfile raises several types for missing/corrupt files
        raise AudioReadError(f"{path}: cannot read audio ({error})") from error
    if samples.shape[0] != wanted:
        raise AudioReadError(f"{path}: decoded {samples.shape[0]} samples, expected {wanted}")
    return samples
