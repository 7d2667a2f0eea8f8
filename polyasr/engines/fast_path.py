"""Which decode path a batch takes when the fast loop is on, and what it holds.

Each loaded ASR model has its :class:`~polyasr.engines.fast_decode.FastDecoder`
(dropped with the model, which frees its static cache and graph pool). A
batch whose clips all fit the static cache runs on it whole; a clip too long
for it (a very long context) runs alone on ``generate`` and the rest of its
batch stays on the fast loop. Such clips are logged the first time and
counted for ``/metrics`` and ``/health``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from polyasr.engines.fast_decode import FastDecoder, Generated

log = logging.getLogger("polyasr.cuda")

_MB = 1_048_576
Rows = list[Generated]
# transformers' generate for (model, inputs, budgets, should_stop, watch): the fallback path.
Generate = Callable[[Any, Any, list[int], Callable[[], bool] | None, bool], Rows | None]


class FastPath:
    """The fast decoders of the loaded models, and the clips sent past them."""

    def __init__(self, positions: int) -> None:
        self.positions = positions
        self.decoders: weakref.WeakKeyDictionary[Any, FastDecoder] = weakref.WeakKeyDictionary()
        self.long_clips = 0  # clips too long for the static cache, decoded by generate

    def ids(
        self,
        model: Any,
        inputs: Any,
        budgets: list[int],
        should_stop: Callable[[], bool] | None,
        generate: Generate,
        watch: bool = False,
    ) -> Rows | None:
        """New token ids per clip with their log-probabilities (``None``:
        ``should_stop`` said to yield); ``watch`` stops looping rows early."""
        fast = self.decoders.get(model)
        if fast is None:
            return generate(model, inputs, budgets, should_stop, watch)
        lengths = inputs["attention_mask"].sum(-1).tolist()
        if fast.fits(len(budgets), max(lengths), max(budgets)):
            return fast.decode(inputs, budgets, should_stop, watch)
        ids: dict[int, Generated] = {}
        for rows, on_generate in self._plan(fast, lengths, budgets):
            part, cut = rows_of(inputs, rows), [budgets[i] for i in rows]
            got = (
                generate(model, part, cut, should_stop, watch)
                if on_generate
                else fast.decode(part, cut, should_stop, watch)
            )
            if got is None:
                return None
            ids.update(zip(rows, got, strict=True))
        return [ids[i] for i in range(len(budgets))]

    def _plan(
        self, fast: FastDecoder, lengths: list[int], budgets: list[int]
    ) -> list[tuple[list[int], bool]]:
        """Row groups and whether each runs on ``generate``: every clip that does
        not fit alone, alone; the rest together where they fit together."""
        long = [i for i, (n, b) in enumerate(zip(lengths, budgets, strict=True)) if not fast.fits(1, n, b)]
        self._count([lengths[i] + budgets[i] for i in long])
        rest = [i for i in range(len(budgets)) if i not in long]
        plan = [([i], True) for i in long]
        for start in range(0, len(rest), fast.max_batch):
            group = rest[start : start + fast.max_batch]
            together = fast.fits(len(group), max(lengths[i] for i in group), max(budgets[i] for i in group))
            plan += [(group, False)] if together else [([i], False) for i in group]
        return plan

    def _count(self, needed: list[int]) -> None:
        """Count clips sent to ``generate``; the log says so the first time only."""
        if needed and not self.long_clips:
            log.warning(
                "a clip needs %d cache positions, more than the fast decoder's %d (POLYASR_DECODE_SPAN): "
                "it runs alone on generate; /metrics and /health count such clips from now on",
                max(needed),
                self.positions,
            )
        self.long_clips += len(needed)

    def info(self, rows: int) -> dict[str, Any]:
        """The static cache's size, what it holds now (nothing once evicted),
        and how many clips were too long for it."""
        return {
            "rows": rows,
            "span": self.positions,
            "cache_mib": round(sum(d.cache_bytes for d in list(self.decoders.values())) / _MB, 1),
            "long_clips_on_generate": self.long_clips,
        }


def rows_of(inputs: Any, rows: list[int]) -> dict[str, Any]:
    """The processor's batch cut to ``rows``, without the text's left padding
    that only the other rows needed."""
    index = inputs["input_ids"].new_tensor(rows)
    part = {key: value.index_select(0, index) for key, value in inputs.items()}
    keep = int(part["attention_mask"].sum(-1).max())
    part["input_ids"] = part["input_ids"][:, -keep:]
    part["attention_mask"] = part["attention_mask"][:, -keep:]
    return part
