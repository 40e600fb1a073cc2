"""The synthetic reasoning task: follow a chain of links to its end.

A puzzle names a start letter and lists N_EDGES links between letters, each written as a
two-letter word `xy` meaning "x leads to y" (two tokens), in random order. The links form
N_CHAINS disjoint chains; the answer is the last letter of the start's chain. The difficulty level
is the number of hops from the start to the end of its chain. Every puzzle has the same number of
links (so every prompt has the same length whatever the level) and the same number of chains (so
guessing among chain ends gives 1/N_CHAINS at any level).

    Start: q. Links: qd kw dm wb mr ...   ->   r      (q>d>m>r: level 3)

Prompts use Huginn's chat template (the fixture's), so `raven chat` sees the same text:
    <|begin_text|><|begin_header|>user<|end_header|>\n\n{puzzle}<|end_turn|><|begin_header|>Huginn<|end_header|>\n\n
and the reply is `{answer}<|end_turn|>`.
"""

from __future__ import annotations

import random
import string

N_EDGES = 12
N_CHAINS = 5
LETTERS = string.ascii_lowercase
MAX_LEVEL = N_EDGES - (N_CHAINS - 1)  # distractor chains need one link each

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


def make_graph(rng: random.Random, level: int) -> list[list[str]]:
    """N_CHAINS disjoint chains with N_EDGES links in all; the first has `level` links."""
    if not 1 <= level <= MAX_LEVEL:
        raise ValueError(f"level {level} outside 1..{MAX_LEVEL}")
    # Split the remaining links among the distractor chains, at least one each.
    rest = N_EDGES - level
    cuts = sorted(rng.sample(range(1, rest), N_CHAINS - 2)) if N_CHAINS > 2 else []
    lengths = [level] + [b - a for a, b in zip([0] + cuts, cuts + [rest])]
    nodes = rng.sample(LETTERS, N_EDGES + N_CHAINS)
    chains, i = [], 0
    for n in lengths:
        chains.append(nodes[i : i + n + 1])
        i += n + 1
    return chains


def links_text(rng: random.Random, chains: list[list[str]]) -> str:
    edges = [a + b for chain in chains for a, b in zip(chain, chain[1:])]
    rng.shuffle(edges)
    return " ".join(edges)


def make_puzzle(rng: random.Random, level: int) -> tuple[str, str]:
    """Returns (puzzle text, answer letter) whose start is `level` hops from its chain's end."""
    chains = make_graph(rng, level)
    return f"Start: {chains[0][0]}. Links: {links_text(rng, chains)}", chains[0][-1]


def make_multi_puzzle(rng: random.Random, level: int, n_starts: int) -> tuple[str, list[str], list[int]]:
    """Training variant with several questions on one graph (denser supervision): the first
    start is `level` hops from its end, the others are random non-final letters. Returns
    (puzzle, answers, levels); the reply is the answers one per line."""
    chains = make_graph(rng, level)
    starts = [(0, 0)]
    others = [(c, j) for c, chain in enumerate(chains) for j in range(len(chain) - 1) if (c, j) != (0, 0)]
    starts += rng.sample(others, n_starts - 1)
    letters = " ".join(chains[c][j] for c, j in starts)
    answers = [chains[c][-1] for c, _ in starts]
    levels = [len(chains[c]) - 1 - j for c, j in starts]
    return f"Start: {letters}. Links: {links_text(rng, chains)}", answers, levels


def chat_prompt(puzzle: str) -> str:
    """The chat template applied to one user turn, with the generation prompt."""
    return (
        "<|begin_text|><|begin_header|>user<|end_header|>\n\n"
        + puzzle.strip()
        + "<|end_turn|><|begin_header|>Huginn<|end_header|>\n\n"
    )


WORDS = ["Start", " Links", "user", "Huginn"]


def build_tokenizer():
    """A byte-level BPE with the fixture's pre-tokenizer, post-processor and decoder, and Huginn's
    special tokens at the top of the id range. The merges are written out, not learned: first
    ` x` for every letter, then the few template words, built left to right. So a link `xy` is
    always two tokens, `Ġx` (the same token as a start letter) and `y` (the same token as an
    answer), and no word merge can reach into a link."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []

    def add(a: str, b: str) -> None:
        if a + b not in vocab:
            merges.append((a, b))
            vocab[a + b] = len(vocab)

    for c in LETTERS:
        add("\u0120", c)
    add("\u010a", "\u010a")  # "\n\n"
    for w in WORDS:
        w = w.replace(" ", "\u0120")
        for i in range(2, len(w) + 1):
            add(w[: i - 1], w[i - 1])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    for a in LETTERS:
        for b in LETTERS:
            if a != b and tok.encode(" " + a + b).tokens != ["\u0120" + a, b]:
                raise RuntimeError(f"link {a}{b} is not two tokens: {tok.encode(' ' + a + b).tokens}")
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok
