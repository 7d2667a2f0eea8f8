"""Diarization quality: diarization error rate per number of speakers.

Each conversation of the synthesized set in tests/data/diarize (2, 3 and 4
espeak-ng voices, turns of 1-8 s with pauses and overlaps; see
``bench.make_diarize_set``) is POSTed to ``/v1/audio/transcriptions`` with
``response_format=diarized_json``; the answer's segments are the hypothesis,
scored against the reference RTTM with ``pyannote.metrics``
(``tests/diarize_set.py``): DER = (missed + false alarm + confusion) / reference
speech, summed over the files of a group. Overlapped speech is scored, not
skipped. Two collars: 0.25 s around each reference boundary (the customary
figure) and none. Rows go by group and speaker count: ``dev`` holds the
voices the service's clustering threshold was tuned on, ``held-out`` four
other voices, ``fresh`` four more (the last two groups were meant as figures
nobody tuned on: see bench.make_diarize_set), ``close`` two voices the encoder hardly tells
apart, ``short`` backchannels under a second. ``count ok`` is the share of files whose number of
hypothesis speakers is the reference's. With ``--known`` (every voice's
reference clip sent as a known speaker) ``named.25`` is the identification
error rate: as DER, but a turn counts only under its own voice's name.

    .venv-cuda/bin/python -m bench.diarize_bench                  # starts a server (tiny ASR weights)
    .venv-cuda/bin/python -m bench.diarize_bench --url http://127.0.0.1:8766
    .venv-cuda/bin/python -m bench.diarize_bench --hint --known   # true count given, voices named
    .venv-cuda/bin/python -m bench.diarize_bench --hypothesis oracle    # checks the scoring: 0 %
    .venv-cuda/bin/python -m bench.diarize_bench --hypothesis one-speaker

The speaker turns do not depend on the ASR checkpoint (voice activity and
speaker embeddings are real models even beside tiny random ASR weights), so
the figures from a server on tiny weights are the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
from pyannote.core import Annotation

from bench.bench_env import add_model_flags, bench_workspace
from tests.conftest import BACKEND, LiveServer
from tests.diarize_set import (
    COLLARS,
    Conversation,
    Score,
    conversations,
    diarize,
    identification_error,
    known_speakers,
    one_speaker,
)


@contextlib.contextmanager
def server_url(args: argparse.Namespace) -> Iterator[str]:
    """``--url``, else a server started here for the run."""
    if args.url:
        yield args.url.rstrip("/")
        return
    work, env = bench_workspace(args, "polyasr-diarize-", POLYASR_STREAMING_PROBE="0")
    server = LiveServer(args.backend, env, work / "server.log")
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()


def row(label: str, score: Score) -> str:
    parts = "  ".join(
        f"{100 * score.share(0.25, key):5.1f}" for key in ("missed detection", "false alarm", "confusion")
    )
    return (
        f"{label:<15} {score.files:>5}  {100 * score.der(0.25):6.1f}  {parts}  "
        f"{100 * score.der(0.0):6.1f}  {score.count_right:>3}/{score.files}"
    )


def hypothesis_for(
    args: argparse.Namespace, http: httpx.Client | None, conversation: Conversation
) -> Annotation:
    if http is None:
        return conversation.reference() if args.hypothesis == "oracle" else one_speaker(conversation)
    fields: dict[str, Any] = {}
    if args.hint:
        fields |= {"min_speakers": conversation.speakers, "max_speakers": conversation.speakers}
    if args.known:
        fields |= known_speakers(conversation)
    return diarize(http, conversation, fields)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["mlx", "cuda"], default=BACKEND)
    parser.add_argument("--url", help="a running server (default: start one on tiny checkpoints)")
    parser.add_argument("--hypothesis", choices=["server", "oracle", "one-speaker"], default="server")
    parser.add_argument("--ci", action="store_true", help="only the conversations the CI test scores")
    parser.add_argument("--hint", action="store_true", help="send the true speaker count as min and max")
    parser.add_argument("--known", action="store_true", help="send every voice's reference clip and name")
    add_model_flags(parser)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    chosen = conversations(ci_only=args.ci)
    order = {"dev": 0, "held-out": 1, "fresh": 2, "close": 3, "short": 4}
    keys = sorted({(c.group, c.speakers) for c in chosen}, key=lambda k: (order.get(k[0], 9), k[1]))
    groups = {key: Score.empty() for key in keys}
    overall = {group: Score.empty() for group, _ in keys}
    audio_sec = wall_sec = 0.0
    with contextlib.ExitStack() as stack:
        http = None
        if args.hypothesis == "server":
            url = stack.enter_context(server_url(args))
            http = stack.enter_context(httpx.Client(base_url=url, timeout=600))
        print(
            f"{'file':<8} {'set':>8} {'spk':>3} {'found':>5}  {'DER.25':>6}  {'DER0':>6}  {'sec':>5}"
            + "  named.25" * args.known
        )
        for conversation in chosen:
            t0 = time.perf_counter()
            hypothesis = hypothesis_for(args, http, conversation)
            took = time.perf_counter() - t0
            audio_sec, wall_sec = audio_sec + conversation.duration, wall_sec + took
            own = groups[(conversation.group, conversation.speakers)].add(conversation, hypothesis)
            overall[conversation.group].add(conversation, hypothesis)
            named = f"  {100 * identification_error(conversation, hypothesis):8.1f}" if args.known else ""
            print(
                f"{conversation.name:<8} {conversation.group:>8} {conversation.speakers:>3} "
                f"{len(hypothesis.labels()):>5}  {100 * own[0.25]:6.1f}  {100 * own[0.0]:6.1f}  "
                f"{took:5.1f}{named}"
            )
    hints = "".join(f", {flag}" for flag in ("hint", "known") if getattr(args, flag))
    print(
        f"\nhypothesis={args.hypothesis}{hints} collars={'/'.join(f'{c:g}' for c in COLLARS)} s, "
        "overlap scored" + (f", {audio_sec / wall_sec:.1f} audio-s per wall-s" if http and wall_sec else "")
    )
    print("set (speakers)  files  DER.25   miss     FA   conf    DER0  count ok")
    for (group, speakers), score in groups.items():
        print(row(f"{group} {speakers}", score))
        rows = [k for k in keys if k[0] == group]
        if (group, speakers) == rows[-1] and len(rows) > 1:
            print(row(f"{group} all", overall[group]))


if __name__ == "__main__":
    main()
