"""Live capture for ``polyasr dictate --mic``.

``sounddevice`` (and the PortAudio library under it) is optional: a server
or CI machine has no microphone, so the package must work without it.
"""

from __future__ import annotations

import asyncio
from types import ModuleType, TracebackType
from typing import Any

from polyasr_client.framing import FRAME_BYTES, SAMPLE_RATE


class MicrophoneUnavailable(RuntimeError):
    """No capture library (or no PortAudio) on this machine."""


def _sounddevice() -> ModuleType:
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: the module is there, PortAudio is not
        raise MicrophoneUnavailable(
            "--mic needs the sounddevice package and the PortAudio library: "
            "pip install 'polyasr-client[mic]' (on Linux also e.g. apt install libportaudio2). "
            f"Cause: {exc}"
        ) from exc
    return sounddevice


class Microphone:
    """The default input as 16 kHz mono PCM16LE chunks of ``frame_bytes``.
    Construct it before connecting, so a missing library fails first."""

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        sounddevice = _sounddevice()
        self._loop = asyncio.get_running_loop()
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._stream = sounddevice.RawInputStream(
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="int16",
            blocksize=frame_bytes // 2,
            callback=self._captured,
        )

    def _captured(self, data: Any, _frames: int, _time: Any, _status: Any) -> None:
        """PortAudio's thread: hand the chunk to the event loop."""
        self._loop.call_soon_threadsafe(self._chunks.put_nowait, bytes(data))

    def __enter__(self) -> Microphone:
        self._stream.start()
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stream.stop()
        self._stream.close()

    async def read(self) -> bytes:
        return await self._chunks.get()
