"""What every part of the service agrees on, defined once: the audio format
the pipeline runs at and the VAD's unit of decision.

Alignment, dictation, the archives and the engines all read these, so the
pause finder of a long alignment and the speech gate of a dictation can never
drift apart.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000  # Hz, mono: what the models hear and the WS protocol carries
BYTES_PER_SAMPLE = 2  # PCM16 on the wire and in the archives
BYTES_PER_SECOND = SAMPLE_RATE * BYTES_PER_SAMPLE

# Silero VAD, as both dictation and alignment use it.
WINDOW_SAMPLES = 2560  # 160 ms: the unit the VAD gate decides on
SUB_CHUNK = 512  # the only input size Silero accepts at 16 kHz
VAD_THRESHOLD = 0.5  # a window is speech when its peak probability reaches this
COMMIT_SILENCE_WINDOWS = 4  # 4 non-speech windows (640 ms) close a chunk
