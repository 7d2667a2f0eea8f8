"""The CUDA engine's decodes besides the fast loop, and how an answer is read back.

transformers' ``generate`` (the CPU path, clips too long for the fast loop,
and the loop guard's retry) and vLLM's, each returning the new token ids with
their log-probabilities under the greedy decode; the repetition-loop cut
(:mod:`polyasr.core.loops`) applied to them; and one clip's transcript read
from its ids by the shared parser (:mod:`polyasr.core.answer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from polyasr.core.answer import ASR_TEXT, parse_answer, scored_tokens
from polyasr.core.engine import Clip, Transcript
from polyasr.core.loops import LoopWatch, banned_next, cut
from polyasr.engines.fast_decode import EOS_IDS, Generated, chosen_logprobs


def generate_rows(
    model: Any,
    inputs: Any,
    budgets: list[int],
    should_stop: Callable[[], bool] | None,
    watch: bool = False,
    ban: list[tuple[int, ...]] | None = None,
) -> list[Generated] | None:
    """transformers' ``generate`` with the largest budget, each row cut at its
    own budget and after its first stop token (the rest is padding); ``None``
    when ``should_stop`` said to yield.

    ``watch`` stops a row once its tail is a repetition loop; ``ban`` (the
    guarded retry: each row's looping span) forbids starting that span
    again right after itself.
    """
    stopped = False
    prompt_len = inputs["input_ids"].shape[1]
    watches = [LoopWatch() for _ in budgets] if watch else []

    def stop_now(input_ids: Any, _scores: Any, **_kw: Any) -> Any:
        """Checked between tokens: yield the device to a waiting final, or end a looping row."""
        nonlocal stopped
        stopped = stopped or (should_stop is not None and should_stop())
        done = torch.full((input_ids.shape[0],), stopped, dtype=torch.bool, device=input_ids.device)
        if watches:
            last = input_ids[:, -1].tolist()
            looping = [w.push(t) is not None for w, t in zip(watches, last, strict=True)]
            done |= torch.tensor(looping, dtype=torch.bool, device=input_ids.device)
        return done

    scorer = _Scorer(prompt_len, ban)
    with torch.inference_mode():
        # The pad token transformers would pick anyway (the first stop token),
        # given here so that it does not log that choice on every call.
        out = model.model.generate(
            **inputs,
            max_new_tokens=max(budgets),
            stopping_criteria=[stop_now],
            logits_processor=[scorer],
            pad_token_id=EOS_IDS[0],
        )
    if stopped:
        return None
    rows = out.sequences[:, prompt_len:].tolist()
    result = []
    for row, score, budget in zip(rows, scorer.logprobs(), budgets, strict=True):
        ids = _through_stop(row[:budget])
        result.append(Generated(ids, score[: len(ids)]))
    return result


def vllm_rows(model: Any, prompts: list[str], wavs: list[Any], budget: int) -> list[Generated]:
    """vLLM's greedy decode; ``logprobs=0`` returns the chosen token's
    log-probability. vLLM offers no hook between tokens: the engine cuts a
    looping tail afterwards, without the guarded retry."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=budget, logprobs=0)
    requests = [
        {"prompt": prompt, "multi_modal_data": {"audio": [wav]}}
        for prompt, wav in zip(prompts, wavs, strict=True)
    ]
    outputs = model.model.generate(requests, sampling_params=params, use_tqdm=False)
    rows = []
    for output in outputs:
        best = output.outputs[0]
        ids = list(best.token_ids)
        steps = best.logprobs or [{} for _ in ids]
        logprobs = [step[t].logprob if t in step else 0.0 for step, t in zip(steps, ids, strict=True)]
        rows.append(Generated(ids, logprobs))
    return rows


def _through_stop(ids: list[int]) -> list[int]:
    """``ids`` up to and including the first stop token."""
    ends = [i for i, token in enumerate(ids) if token in EOS_IDS]
    return ids[: ends[0] + 1] if ends else ids


def _before_stop(ids: list[int]) -> list[int]:
    """``ids`` up to, not including, the first stop token."""
    ends = [i for i, token in enumerate(ids) if token in EOS_IDS]
    return ids[: ends[0]] if ends else ids


def ended(row: Generated) -> bool:
    """Whether a decode ended its answer (a stop token), rather than its budget."""
    return bool(row.ids) and row.ids[-1] in EOS_IDS


def cut_loop(row: Generated) -> Generated:
    """``row`` with a looping tail cut to one occurrence (the shared rule; a
    row that ran out of budget is held to its looser tail rule too)."""
    ids, loop = cut(_before_stop(row.ids), ended=ended(row))
    return row if loop is None else Generated(ids, row.logprobs[: len(ids)], True, loop.span)


def transcript(tokenizer: Any, clip: Clip, prefix: str, row: Generated) -> Transcript:
    """One clip's answer read by the shared parser, with its scored tokens
    (the generated words only: ``prefix`` is the answer prefix in the prompt)."""
    ids = _before_stop(row.ids)
    raw = prefix + tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    answer = parse_answer(raw, clip.language)
    tokens = scored_tokens(
        ids,
        row.logprobs[: len(ids)],
        marker_id=tokenizer.convert_tokens_to_ids(ASR_TEXT),
        skip=set(tokenizer.all_special_ids),
        piece=tokenizer.convert_ids_to_tokens,
        text=lambda token: tokenizer.decode([token], clean_up_tokenization_spaces=False),
    )
    return Transcript(answer.text, answer.language, raw, tokens, row.loop_cut)


class _Scorer:
    """A logits processor (the last, so its argmax is ``generate``'s greedy
    choice) recording each step's chosen-token log-probability under the
    model's own distribution; with ``ban`` it first forbids the token that
    would start its row's cut looping span again (the guarded retry)."""

    def __init__(self, prompt_len: int, ban: list[tuple[int, ...]] | None) -> None:
        self.prompt_len = prompt_len
        self.ban = ban
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raw = scores.float()
        if self.ban:
            scores = scores.clone()
            for row, ids in enumerate(input_ids[:, self.prompt_len :].tolist()):
                banned = banned_next(ids, self.ban[row])
                if banned is not None:
                    scores[row, banned] = -float("inf")
        self.steps.append(chosen_logprobs(raw, scores.argmax(-1)))
        return scores

    def logprobs(self) -> list[list[float]]:
        """Per row, each step's log-probability (one host copy at the end)."""
        return torch.stack(self.steps, dim=1).tolist() if self.steps else []
