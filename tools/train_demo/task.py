"""The synthetic reasoning task: follow a chain of links to its end.

A puzzle lists N_EDGES links `x>y` between letters, forming N_CHAINS disjoint chains, in random
order, then asks where a start letter leads. The answer is the last letter of the start's chain.
The difficulty level is the number of hops from the start to the end of its chain; every puzzle
has the same number of links (so every prompt has the same length whatever the level) and the
same number of chains (so guessing among chain ends gives 1/N_CHAINS at any level).

    q>d k>w d>m w>b m>r ... Where does q lead?   ->   r

Prompts use Huginn's chat template (the fixture's), so `raven chat` sees the same text:
    <|begin_text|><|begin_header|>user<|end_header|>\\n\\n{puzzle}<|end_turn|><|begin_header|>Huginn<|end_header|>\\n\\n
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


def make_puzzle(rng: random.Random, level: int) -> tuple[str, str]:
    """Returns (puzzle text, answer letter) whose start is `level` hops from its chain's end."""
    if not 1 <= level <= MAX_LEVEL:
        raise ValueError(f"level {level} outside 1..{MAX_LEVEL}")
    # Split the remaining links among the distractor chains, at least one each.
    rest = N_EDGES - level
    cuts = sorted(rng.sample(range(1, rest), N_CHAINS - 2)) if N_CHAINS > 2 else []
    lengths = [level] + [b - a for a, b in zip([0] + cuts, cuts + [rest])]
    nodes = rng.sample(LETTERS, N_EDGES + N_CHAINS)
    edges = []
    chains = []
    i = 0
    for n in lengths:
        chain = nodes[i : i + n + 1]
        i += n + 1
        chains.append(chain)
        edges.extend(f"{a}>{b}" for a, b in zip(chain, chain[1:]))
    rng.shuffle(edges)
    start, answer = chains[0][0], chains[0][-1]
    return f"{' '.join(edges)}. Where does {start} lead?", answer


def chat_prompt(puzzle: str) -> str:
    """The chat template applied to one user turn, with the generation prompt."""
    return (
        "<|begin_text|><|begin_header|>user<|end_header|>\n\n"
        + puzzle.strip()
        + "<|end_turn|><|begin_header|>Huginn<|end_header|>\n\n"
    )


def build_tokenizer(seed: int = 0, vocab_size: int = 320):
    """A byte-level BPE (the fixture's pre-tokenizer, post-processor and decoder) trained on
    puzzle text, with Huginn's special tokens at the top of the id range."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = random.Random(seed)
    corpus = []
    for _ in range(4000):
        puzzle, answer = make_puzzle(rng, rng.randint(1, MAX_LEVEL))
        corpus.append(puzzle)
        corpus.append(answer)
    corpus += ["user", "Huginn", "\n\n", "Hello! Ask me where a letter leads."] * 50
    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(corpus, trainer)
    assert tok.get_vocab_size() == vocab_size - len(SPECIAL_TOKENS), tok.get_vocab_size()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok
