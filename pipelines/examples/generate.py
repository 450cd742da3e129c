"""``generate``: a toy autoregressive token model, streamed one token per step, with continuous
batching (see :mod:`workers.streaming`).

Input: ``{"prompt": "once upon a time", "max_tokens": 12}`` (``max_tokens`` optional).
Chunks: one token (a syllable) per step; result: the list of tokens.

The model is built in code with a fixed seed (numpy, no torch): a recurrent cell over
embeddings, ``h' = tanh(W h + E[token])``, then a softmax over a vocabulary of syllables,
sampled with a generator seeded by the prompt (so a prompt always gives the same tokens).
Reading the prompt costs one cell step per character, so batches are bounded by the total
prompt length (``batch_size_fn``). Without ``max_tokens``, output lengths are skewed as chat
answers are: most prompts get 8 tokens, one in five gets 64.

    >>> [e.value for e in client.stream("generate", {"prompt": "hi", "max_tokens": 3})]
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.dsl import Pipeline, stage
from workers.batching import batch
from workers.streaming import Slot

SEED = 0
DIM = 64
MAX_TOKENS = 256
PROMPT_BUDGET = 4096
"""Most prompt characters (the prefill's cost) the running batch holds."""
MAX_RUNNING = 16
"""Most sequences the running batch holds."""
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
VOCAB = [c + v for c in _CONSONANTS for v in _VOWELS] + [" ", ".", ","]


def output_length(prompt: str, max_tokens: int | None) -> int:
    """How many tokens a prompt gets: ``max_tokens``, else 8, or 64 for one prompt in five."""
    if max_tokens is not None:
        return max_tokens
    return 64 if zlib.crc32(prompt.encode()) % 5 == 0 else 8


def prompt_cost(items: list[Any]) -> int:
    """A batch's cost: its prompts' total length (at least 1 per item)."""
    return sum(max(1, len(item["prompt"])) for item in items)


@dataclass(eq=False)
class Sequence:
    """One prompt being generated: the cell's state, the last token, the tokens to go."""

    h: np.ndarray[Any, Any]
    token: int
    left: int
    rng: np.random.Generator


class TokenModel:
    """The toy model (fixed seed): embeddings, a recurrent cell, an output projection."""

    def __init__(self, seed: int = SEED, dim: int = DIM) -> None:
        rng = np.random.default_rng(seed)
        self.embed = rng.normal(0.0, 0.6, (len(VOCAB), dim))
        self.cell = rng.normal(0.0, 1.0 / np.sqrt(dim), (dim, dim))
        self.out = rng.normal(0.0, 1.0, (len(VOCAB), dim))

    def tokens(self, text: str) -> list[int]:
        return [ord(char) % len(VOCAB) for char in text]

    def start(self, prompt: str, length: int) -> Sequence:
        """Read the prompt (one cell step per character)."""
        h = np.zeros(self.cell.shape[0])
        token = 0
        for token in self.tokens(prompt):
            h = np.tanh(self.cell @ h + self.embed[token])
        seed = zlib.crc32(prompt.encode())
        return Sequence(h, token, length, np.random.default_rng(seed))

    def step(self, sequences: list[Sequence]) -> list[int]:
        """One token for each sequence, the batch in one matrix product."""
        hs = np.stack([s.h for s in sequences])
        tokens = np.array([s.token for s in sequences])
        hs = np.tanh(hs @ self.cell.T + self.embed[tokens])
        logits = hs @ self.out.T
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        out = []
        for s, h, p in zip(sequences, hs, probs, strict=True):
            s.h = h
            s.token = int(s.rng.choice(len(VOCAB), p=p))
            s.left -= 1
            out.append(s.token)
        return out


def check(item: Any) -> tuple[str, int]:
    """The prompt and output length of an input (ValueError says what is wrong)."""
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        raise ValueError('the input must be {"prompt": "...", "max_tokens": n}')
    max_tokens = item.get("max_tokens")
    if max_tokens is not None and not (
        isinstance(max_tokens, int) and 1 <= max_tokens <= MAX_TOKENS
    ):
        raise ValueError(f"max_tokens must be an integer from 1 to {MAX_TOKENS}")
    return item["prompt"], output_length(item["prompt"], max_tokens)


class Generator:
    """The token model, served one step at a time: each running prompt gets one token per
    step; a prompt that has its tokens leaves, and a waiting one takes its place."""

    def __init__(self) -> None:
        self.model = TokenModel()

    @batch(
        max_batch_size=PROMPT_BUDGET,
        batch_size_fn=prompt_cost,
        max_batch_items=MAX_RUNNING,
        continuous=True,
    )
    def step(self, slots: list[Slot]) -> list[Any]:
        outputs: list[Any] = [StopIteration] * len(slots)
        running: list[tuple[int, Sequence]] = []
        for index, slot in enumerate(slots):
            if slot.state is None:
                try:
                    slot.state = self.model.start(*check(slot.input))
                except ValueError as exc:
                    outputs[index] = exc
                    continue
            if slot.state.left > 0:
                running.append((index, slot.state))
        if running:
            tokens = self.model.step([sequence for _, sequence in running])
            for (index, _), token in zip(running, tokens, strict=True):
                outputs[index] = VOCAB[token]
        return outputs


generate = Pipeline(
    "generate",
    stage(Generator, name="generate"),
    input_schema={
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "maxLength": PROMPT_BUDGET},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    },
    example={"prompt": "once upon a time", "max_tokens": 12},
    description="A toy autoregressive token model: streams one token per step "
    "(POST /v1/pipelines/generate/stream); the result is the list of tokens.",
)
