"""``polyasr``: the service from a shell.

Exit status: 0 done (``health``: status ``ok``), 1 the service refused or is
degraded, or a file cannot be read, 2 a usage problem (bad arguments, a URL
that names no server, no microphone), 130 interrupted. Every failure is one
line on stderr (``polyasr: <code>: <what happened>``), not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from polyasr_client.audio import AudioFileError, decode_pcm16
from polyasr_client.dictation import Dictation, stream_pcm
from polyasr_client.errors import PolyAsrError
from polyasr_client.http_api import PLAIN_FORMATS, PolyAsrClient
from polyasr_client.locate import LOCAL_PORTS, UrlError, server_url
from polyasr_client.mic import Microphone, MicrophoneUnavailable
from polyasr_client.terminal import PartialDisplay, upload_progress

Command = Callable[[argparse.Namespace], Awaitable[int]]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.url, found = server_url(args.url)
        if found is not None:
            print(f"polyasr: server {args.url} ({found})", file=sys.stderr)
        return asyncio.run(args.command(args))
    except PolyAsrError as exc:
        where = f", HTTP {exc.status}" if exc.status else ""
        print(f"polyasr: {exc.code}{where}: {exc.message}", file=sys.stderr)
        return 1
    except AudioFileError as exc:
        print(f"polyasr: cannot read audio: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None:  # not a file of ours: a genuine bug, keep its traceback
            raise
        print(f"polyasr: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    except (UrlError, MicrophoneUnavailable) as exc:
        print(f"polyasr: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyasr", description="polyasr speech-recognition client")
    url_help = (
        "server base URL, http(s) or ws(s) (default: $POLYASR_URL, else this machine's server: "
        f"port $POLYASR_PORT, else the first of {' and '.join(map(str, LOCAL_PORTS))} that listens)"
    )
    parser.add_argument("--url", default=None, help=url_help)
    key_help = "the server's POLYASR_API_KEY (default: $POLYASR_API_KEY)"
    parser.add_argument("--api-key", default=None, help=key_help)
    # the same option after the subcommand; SUPPRESS keeps it from resetting the one above
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    common.add_argument("--api-key", default=argparse.SUPPRESS, help=key_help)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(command=run)
        return p

    p = command("transcribe", _transcribe, "transcribe an audio file (POST /v1/audio/transcriptions)")
    p.add_argument("file")
    p.add_argument("--language", help="code (en, zh-HK) or name (English); default: detect")
    p.add_argument("--context", help="recognition hint: names, vocabulary")
    formats = ("json", "text", "verbose_json", "srt", "vtt")
    p.add_argument("--format", choices=formats, default="json", help="srt and vtt: sentence cues")
    p.add_argument(
        "--diarize",
        action="store_true",
        help="who said what (diarized_json); --format text prints 'SPEAKER START-END: text' lines",
    )
    p.add_argument(
        "--speaker",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="with --diarize: a known speaker and a 2-10 s recording of them (up to 4)",
    )
    _speaker_counts(p)

    p = command("align", _align, "word and sentence timings of an audio file (POST /v1/align)")
    p.add_argument("file")
    p.add_argument("--text", help="the transcript to align (default: the server recognizes it)")
    p.add_argument("--language")
    p.add_argument("--max-chunk-seconds", type=int)
    p.add_argument(
        "--diarize", action="store_true", help="cut sentences at speaker turns, each with its speaker"
    )
    _speaker_counts(p)

    p = command("dictate", _dictate, "stream a file (at real-time pace) or the microphone over the socket")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?")
    source.add_argument("--mic", action="store_true", help="capture the microphone until Enter or Ctrl-C")
    p.add_argument("--language")
    p.add_argument("--context")
    p.add_argument("--pace", type=float, default=1.0, help="x real time for a file; 0 = as fast as possible")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--partials", action="store_true", help="print partials as lines on stderr when not a TTY")
    p.add_argument(
        "--final-timeout",
        type=float,
        default=15.0,
        help="seconds to wait for the final after stop before recovering through the batch endpoint",
    )

    command("health", _health, "readiness of the server (exit 1 unless status is ok)")
    command("unload", _unload, "evict every resident model now")
    return parser


def _speaker_counts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-speakers", type=int, help="with --diarize: at least this many speakers")
    parser.add_argument("--max-speakers", type=int, help="with --diarize: at most this many speakers")


def _known_speakers(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    known = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            parser.error(f"--speaker takes NAME=FILE, not {pair!r}")
        known[name] = path
    return known


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


async def _transcribe(args: argparse.Namespace) -> int:
    if args.diarize:
        return await _diarize(args)
    if args.speaker or args.min_speakers or args.max_speakers:
        build_parser().error("--speaker, --min-speakers and --max-speakers need --diarize")
    async with (
        PolyAsrClient(args.url, api_key=args.api_key) as client,
        upload_progress("uploading", "transcribing") as progress,
    ):
        result = await client.transcribe(
            args.file,
            language=args.language,
            context=args.context,
            response_format=args.format,
            on_progress=progress,
        )
    if args.format in PLAIN_FORMATS:
        print(result.text, end="" if result.text.endswith("\n") else "\n")
    else:
        print(json.dumps(result.raw, ensure_ascii=False))
    return 0


async def _diarize(args: argparse.Namespace) -> int:
    if args.format not in ("json", "text"):
        build_parser().error("--diarize prints json or text")
    known = _known_speakers(build_parser(), args.speaker)
    async with (
        PolyAsrClient(args.url, api_key=args.api_key) as client,
        upload_progress("uploading", "diarizing") as progress,
    ):
        result = await client.diarize(
            args.file,
            language=args.language,
            context=args.context,
            known_speakers=known,
            min_speakers=args.min_speakers,
            max_speakers=args.max_speakers,
            on_progress=progress,
        )
    if args.format == "text":
        for segment in result.segments:
            print(f"{segment.speaker} {segment.start:.2f}-{segment.end:.2f}: {segment.text}")
    else:
        segments = [s.to_json() for s in result.segments]
        _print_json({"text": result.text, "duration": result.duration, "segments": segments})
    return 0


async def _align(args: argparse.Namespace) -> int:
    async with (
        PolyAsrClient(args.url, api_key=args.api_key) as client,
        upload_progress("uploading", "aligning") as progress,
    ):
        result = await client.align(
            args.file,
            text=args.text,
            language=args.language,
            max_chunk_seconds=args.max_chunk_seconds,
            diarize=args.diarize,
            min_speakers=args.min_speakers,
            max_speakers=args.max_speakers,
            on_progress=progress,
        )
    _print_json(result.to_json())
    return 0


async def _dictate(args: argparse.Namespace) -> int:
    display = PartialDisplay(sys.stdout, lines=args.partials)
    mic = Microphone() if args.mic else None
    pcm = None if mic else await asyncio.to_thread(decode_pcm16, args.file)
    dictation = Dictation(
        args.url,
        api_key=args.api_key,
        language=args.language,
        context=args.context,
        on_partial=display.show,
        final_timeout=args.final_timeout,
    )
    async with dictation:
        if mic is not None:
            with mic:
                await _capture(dictation, mic)
        elif pcm is not None:
            await stream_pcm(dictation, pcm, pace=args.pace)
        result = await dictation.stop()
    display.clear()
    if args.format == "json":
        _print_json(dataclasses.asdict(result))
    else:
        print(result.text)
    return 0


async def _capture(dictation: Dictation, mic: Microphone) -> None:
    """Microphone frames until Enter or Ctrl-C; the utterance is then stopped
    and finalized, not thrown away."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def wait_for_enter() -> None:
        sys.stdin.readline()
        loop.call_soon_threadsafe(done.set)

    loop.add_signal_handler(signal.SIGINT, done.set)
    # a daemon thread: a pending readline must not hold up interpreter exit
    threading.Thread(target=wait_for_enter, daemon=True).start()
    print("listening; press Enter or Ctrl-C to stop", file=sys.stderr)
    try:
        while not done.is_set():
            try:
                chunk = await asyncio.wait_for(mic.read(), 0.2)
            except TimeoutError:
                continue
            await dictation.send_audio(chunk)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _health(args: argparse.Namespace) -> int:
    async with PolyAsrClient(args.url, api_key=args.api_key, timeout=30.0) as client:
        body = await client.health()
    _print_json(body)
    return 0 if body.get("status") == "ok" else 1


async def _unload(args: argparse.Namespace) -> int:
    async with PolyAsrClient(args.url, api_key=args.api_key, timeout=120.0) as client:
        _print_json(await client.unload())
    return 0
