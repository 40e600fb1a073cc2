"""The synthetic reasoning task: track a ball under shuffled cups.

A ball starts under one of N_CUPS cups; then a list of swaps follows, each written `ij` (swap the
cups at places i and j, one token). The answer is where the ball ends up. The difficulty level is
the number of swaps: every swap depends on where the previous ones left the ball, so a model that
follows the swaps one after the other needs more sequential steps (core iterations) the longer the
list. Guessing gives 1/N_CUPS at any level.

    Ball: 3. Swaps: 13 45 12 34   ->   4      (3 -> 1 -> 1 -> 2 -> 2: level 4)

Prompts use Huginn's chat template (the fixture's), so `raven chat` sees the same text:
    <|begin_text|><|begin_header|>user<|end_header|>\\n\\n{puzzle}<|end_turn|><|begin_header|>Huginn<|end_header|>\\n\\n
and the reply is `{answer}<|end_turn|>`.
"""

from __future__ import annotations

import itertools
import random

N_CUPS = 5
CUPS = [str(i) for i in range(1, N_CUPS + 1)]
SWAPS = [a + b for a, b in itertools.combinations(CUPS, 2)]

SPECIAL_TOKENS = [
    "<|begin_text|>",
    "<|end_text|>",
    "<|begin_header|>",
    "<|end_header|>",
    "<|end_turn|>",
    "<|pad|>",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|begin_header|>' + message['role'] + "
    "'<|end_header|>\n\n' + message['content'] | trim + '<|end_turn|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|begin_header|>Huginn<|end_header|>\n\n' }}{% endif %}"
)


def make_puzzle(rng: random.Random, level: int) -> tuple[str, str]:
    """Returns (puzzle text, answer) with `level` swaps."""
    if level < 1:
        raise ValueError(f"level {level} must be at least 1")
    ball = rng.choice(CUPS)
    swaps = [rng.choice(SWAPS) for _ in range(level)]
    pos = ball
    for s in swaps:
        if pos == s[0]:
            pos = s[1]
        elif pos == s[1]:
            pos = s[0]
    return f"Ball: {ball}. Swaps: {' '.join(swaps)}", pos


def make_trace(rng: random.Random, level: int) -> tuple[str, list[str]]:
    """The multi-token task of models/demo-trace (`train.py --task trace`): the same puzzle as
    make_puzzle (same random draws), answered with where the ball is after every swap. Answer k
    is swap k applied to answer k-1, so each depends on the one before; the last is
    make_puzzle's answer."""
    if level < 1:
        raise ValueError(f"level {level} must be at least 1")
    ball = rng.choice(CUPS)
    swaps = [rng.choice(SWAPS) for _ in range(level)]
    pos, trace = ball, []
    for s in swaps:
        if pos == s[0]:
            pos = s[1]
        elif pos == s[1]:
            pos = s[0]
        trace.append(pos)
    return f"Ball: {ball}. Swaps: {' '.join(swaps)}", trace


def make_rounds(rng: random.Random, level: int, rounds: int = 4) -> tuple[str, list[str]]:
    """A multi-token variant tried for models/demo-trace (`train.py --task rounds`): the swap
    list applied `rounds` times; answer k is where the ball is after round k, starting from
    answer k-1. The first answer is make_puzzle's answer."""
    ball = rng.choice(CUPS)
    swaps = [rng.choice(SWAPS) for _ in range(level)]
    pos, out = ball, []
    for _ in range(rounds):
        for s in swaps:
            if pos == s[0]:
                pos = s[1]
            elif pos == s[1]:
                pos = s[0]
        out.append(pos)
    return f"Ball: {ball}. Swaps: {' '.join(swaps)}", out


def reply_text(answers: list[str]) -> str:
    """A multi-token reply: answers separated by spaces, so the first is the digit token `i`
    (as in the single-answer task) and every later one the single token ` i`."""
    return " ".join(answers)


def chat_prompt(puzzle: str) -> str:
    """The chat template applied to one user turn, with the generation prompt."""
    return (
        "<|begin_text|><|begin_header|>user<|end_header|>\n\n"
        + puzzle.strip()
        + "<|end_turn|><|begin_header|>Huginn<|end_header|>\n\n"
    )


WORDS = ["Ball", " Swaps", "user", "Huginn"]


def build_tokenizer():
    """A byte-level BPE with the fixture's pre-tokenizer, post-processor and decoder, and Huginn's
    special tokens at the top of the id range. The merges are written out, not learned: ` i` for
    every cup, ` ij` for every swap, then the few template words, built left to right. So every
    swap is one token, a start cup is the token ` i` and an answer the single digit `i`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []

    def add(a: str, b: str) -> None:
        if a + b not in vocab:
            merges.append((a, b))
            vocab[a + b] = len(vocab)

    for c in CUPS:
        add("\u0120", c)
    for s in SWAPS:
        add("\u0120" + s[0], s[1])
    add("\u010a", "\u010a")  # "\n\n"
    for w in WORDS:
        w = w.replace(" ", "\u0120")
        for i in range(2, len(w) + 1):
            add(w[: i - 1], w[i - 1])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    for s in SWAPS:
        if tok.encode(" " + s).tokens != ["\u0120" + s]:
            raise RuntimeError(f"swap {s} is not one token: {tok.encode(' ' + s).tokens}")
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok
