"""The cup-swap task of task.py for the Ouro demo, with an Ouro-style tokenizer and ChatML prompts.

The puzzles are task.make_puzzle's (same generator, same random draws), with the cups written as
letters A..E instead of digits 1..5:

    Ball: C. Swaps: AC BE AB CD   ->   B      (C -> A -> A -> B -> B: level 4)

Letters, because Ouro's tokenizer pipeline (the SmolLM one of tests/fixtures/tiny-ouro) splits
every digit into its own token (pre-tokenizer `Digits(individual_digits=true)`), so a swap `35`
could never be one token; ` AC` can. The tokenizer keeps that pipeline unchanged (same
normalizer, pre-tokenizer, post-processor and decoder as the fixture's tokenizer.json), with
Ouro's special tokens at ids 0..4 (`<|endoftext|>` 0, `<|im_start|>` 1, `<|im_end|>` 2, `<think>`
3, `</think>` 4), the 256 byte symbols at 5..260, and merges written out (not learned): every
start cup ` X` and swap ` XY` is one token, an answer is the single letter `X`, and the template
words are single tokens.

Prompts use the fixture's ChatML template (default system turn "You are a helpful assistant."),
so `raven chat` sees exactly the training text:
    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n{puzzle}<|im_end|>\\n<|im_start|>assistant\\n
and the trained reply is `{answer}<|im_end|>`.
"""

from __future__ import annotations

import itertools
import json
import os
import random

import task

N_CUPS = task.N_CUPS
CUPS = [chr(ord("A") + i) for i in range(N_CUPS)]
SWAPS = [a + b for a, b in itertools.combinations(CUPS, 2)]
_TO_LETTER = str.maketrans({d: c for d, c in zip(task.CUPS, CUPS)})

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
SYSTEM_PROMPT = "You are a helpful assistant."

# The fixture's chat template (tests/fixtures/tiny-ouro/tokenizer_config.json), verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Words of the template and the puzzle text that get one token each (byte-level spelling).
WORDS = ["system", "user", "assistant", "You", " are", " a", " helpful", " assistant", "Ball", " Swaps"]


def make_puzzle(rng: random.Random, level: int) -> tuple[str, str]:
    """(puzzle text, answer letter) with `level` swaps: task.make_puzzle with letters for cups."""
    puzzle, answer = task.make_puzzle(rng, level)
    return puzzle.translate(_TO_LETTER), answer.translate(_TO_LETTER)


def chat_prompt(puzzle: str) -> str:
    """CHAT_TEMPLATE applied to [user puzzle] with the generation prompt."""
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{puzzle}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


REPLY_END = "<|im_end|>"


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = []

    def add(a: str, b: str) -> None:
        if a + b not in vocab:
            merges.append((a, b))
            vocab[a + b] = len(vocab)

    for c in CUPS:
        add("\u0120", c)
    for s in SWAPS:
        add("\u0120" + s[0], s[1])
    def bpe(word: str) -> list[str]:
        """The pieces the current merges make of `word` (lowest rank first, as BPE applies them)."""
        rank = {m: i for i, m in enumerate(merges)}
        pieces = list(word)
        while True:
            pairs = [(rank[p], i) for i, p in enumerate(zip(pieces, pieces[1:])) if p in rank]
            if not pairs:
                return pieces
            _, i = min(pairs)
            pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]

    for w in WORDS:
        # Merge what the existing merges leave of the word, left to right; new merges rank last,
        # so the word's own earlier pieces (e.g. "assistant" inside " assistant") stay intact.
        pieces = bpe(w.replace(" ", "\u0120"))
        while len(pieces) > 1:
            add(pieces[0], pieces[1])
            pieces[0:2] = [pieces[0] + pieces[1]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # The fixture's (SmolLM's) pipeline, unchanged.
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens(SPECIAL_TOKENS)
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s} has id {tok.token_to_id(s)}, not {i}")
    for s in SWAPS:
        if tok.encode(" " + s).tokens != ["\u0120" + s]:
            raise RuntimeError(f"swap {s} is not one token: {tok.encode(' ' + s).tokens}")
    for w in WORDS:
        if len(tok.encode(w).ids) != 1:
            raise RuntimeError(f"word {w!r} is not one token: {tok.encode(w).tokens}")
    return tok


def write_tokenizer_files(tok, out: str) -> None:
    """tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json:
    the files `GPT2TokenizerFast.save_pretrained` writes (as in tests/fixtures/tiny-ouro)."""
    tok.save(os.path.join(out, "tokenizer.json"))
    tok.model.save(out)  # vocab.json, merges.txt
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    tc = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "extra_special_tokens": {},
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
        f.write("\n")
    sm = {
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(sm, f, indent=2)
        f.write("\n")
