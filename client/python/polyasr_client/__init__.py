"""Client of the polyasr speech-recognition service.

``Dictation`` streams one utterance over the WebSocket protocol (v2: acks,
resume, coverage proof, batch fallback); ``PolyAsrClient`` calls the HTTP
endpoints. Neither imports anything from the server: the wire contract is
the only thing they share.
"""

from polyasr_client.audio import AudioFileError, decode_pcm16
from polyasr_client.dictation import (
    Dictation,
    DictationResult,
    DictationStats,
    PartialCallback,
    stream_pcm,
)
from polyasr_client.errors import (
    HTTP_ERRORS,
    WS_ERRORS,
    AudioBeforeStart,
    BadRequest,
    ConnectionLost,
    InternalError,
    InvalidJson,
    InvalidRequest,
    MissingSessionId,
    ModelUnavailable,
    PolyAsrError,
    ProtocolError,
    StopBeforeStart,
    UnframedAudio,
    UnsupportedAudioFormat,
    UnsupportedLanguage,
    UnsupportedMessage,
    UnsupportedVersion,
    UploadTooLarge,
    error_from_message,
    error_from_response,
)
from polyasr_client.framing import FrameError, decode_frame, encode_frame
from polyasr_client.http_api import PolyAsrClient, ProgressCallback
from polyasr_client.ledger import FrameLedger
from polyasr_client.link import Connector, Link, LinkClosed, WebSocketLink, connect_websocket
from polyasr_client.messages import DEFAULT_URL, covers, opening_message, stop_message, websocket_url
from polyasr_client.partials import PartialText
from polyasr_client.results import AlignResult, ManifestEntry, Segment, Transcription, Word
from polyasr_client.wav import wav_from_pcm16

__all__ = [
    "DEFAULT_URL",
    "HTTP_ERRORS",
    "WS_ERRORS",
    "AlignResult",
    "AudioBeforeStart",
    "AudioFileError",
    "BadRequest",
    "ConnectionLost",
    "Connector",
    "Dictation",
    "DictationResult",
    "DictationStats",
    "FrameError",
    "FrameLedger",
    "InternalError",
    "InvalidJson",
    "InvalidRequest",
    "Link",
    "LinkClosed",
    "ManifestEntry",
    "MissingSessionId",
    "ModelUnavailable",
    "PartialCallback",
    "PartialText",
    "PolyAsrClient",
    "PolyAsrError",
    "ProgressCallback",
    "ProtocolError",
    "Segment",
    "StopBeforeStart",
    "Transcription",
    "UnframedAudio",
    "UnsupportedAudioFormat",
    "UnsupportedLanguage",
    "UnsupportedMessage",
    "UnsupportedVersion",
    "UploadTooLarge",
    "WebSocketLink",
    "Word",
    "connect_websocket",
    "covers",
    "decode_frame",
    "decode_pcm16",
    "encode_frame",
    "error_from_message",
    "error_from_response",
    "opening_message",
    "stop_message",
    "stream_pcm",
    "wav_from_pcm16",
    "websocket_url",
]
