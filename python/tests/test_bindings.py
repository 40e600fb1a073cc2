"""The Python bindings against the official implementation's outputs on the tiny-huginn fixture
and against `raven logits`; streaming, errors and the GIL."""
import json
import subprocess
import threading
import time

import numpy as np
import pytest

import raven
from conftest import DEMO, FIXTURE, RAVEN_BIN, ROOT, read_safetensors


def ids(v):
    return json.loads(v) if isinstance(v, str) else v


def case(reference, name):
    j, _ = reference
    return next(c for c in j["cases"] if c["name"] == name)


@pytest.mark.parametrize("name", ["decode.full.p0.r8", "decode.full.p1.r8", "decode.compress-s4.p1.r8"])
def test_greedy_decode_gives_the_official_tokens(reference, tiny_f32, name):
    j, _ = reference
    c = case(reference, name)
    prompt = j["prompt_token_ids"][c["prompt"]]
    want = ids(c["new_tokens"])
    m = raven.Model(str(tiny_f32))
    s = m.session(
        steps=c["num_steps"],
        init_scale=0.0,
        cache=c["cache_lookup_strategy"],
        cache_type="f32",
        temperature=0.0,
        ignore_eos=True,
    )
    g = s.generate(prompt, max_tokens=len(want))
    assert g.tokens == want
    assert g.steps == [c["num_steps"]] * len(want)
    assert g.finish_reason == "length"
    assert s.history == prompt + want


@pytest.mark.parametrize("r", [1, 4, 32])
def test_logits_match_the_official_forward_and_raven_logits(reference, tiny_f32, tmp_path, r):
    j, tensors = reference
    prompt = j["prompt_token_ids"][1]
    m = raven.Model(str(tiny_f32))
    got, steps = m.logits(prompt, steps=r, return_steps=True)
    assert got.dtype == np.float32 and got.shape == (len(prompt), m.n_vocab)
    assert list(steps) == [r] * len(prompt)
    shape, want = tensors[f"forward.p1.r{r}.logits"]
    want = np.asarray(want, dtype=np.float32).reshape(shape)
    assert np.abs(got - want).max() <= 2e-4
    # The command line on the same file: bit for bit.
    out = tmp_path / "cli.safetensors"
    subprocess.run(
        [str(RAVEN_BIN), "logits", "-m", str(tiny_f32), "--tokens", ",".join(map(str, prompt)),
         "--steps", str(r), "--init-scale", "0", "-o", str(out)],
        check=True,
    )
    cli_shape, cli = read_safetensors(out)["logits"]
    assert np.array_equal(got, np.asarray(cli, dtype=np.float32).reshape(cli_shape))


def test_adaptive_logits_give_the_official_steps(reference, tiny_f32):
    j, _ = reference
    c = case(reference, "adaptive.kl:1e-3.p0")
    m = raven.Model(str(tiny_f32))
    _, steps = m.logits(
        j["prompt_token_ids"][0], exit=c["criterion"], max_steps=c["max_steps"], return_steps=True
    )
    assert list(steps) == ids(c["compute_steps"])


def test_stream_equals_generate_and_reports_iterations():
    m = raven.Model(str(DEMO))
    puzzle = "Ball: 3. Swaps: 12 34 45 13"
    g = m.session(steps=16, exit="latent-diff").generate(puzzle, max_tokens=8, chat=True)
    s = m.session(steps=16, exit="latent-diff")
    st = s.stream(puzzle, max_tokens=8, chat=True)
    pieces = list(st)
    assert "".join(p.text for p in pieces) == g.text
    assert [p.token for p in pieces if p.token is not None] == g.tokens
    assert [p.steps for p in pieces if p.token is not None] == g.steps
    assert st.result.text == g.text and st.result.tokens == g.tokens
    assert all(1 <= k <= 16 for k in g.steps) and g.mean_steps < 16
    # Stop strings end the text before them.
    t = m.session(steps=4, ignore_eos=True).generate("Ball: 1. Swaps:", max_tokens=20)
    assert len(t.text) > 2
    cut = t.text[1:3]
    u = m.session(steps=4, ignore_eos=True).generate("Ball: 1. Swaps:", max_tokens=20, stop=[cut])
    assert u.text == t.text[: t.text.index(cut)] and u.finish_reason == "stop"


def test_tokenize_detokenize_and_chat():
    m = raven.Model(str(DEMO))
    toks = m.tokenize("Ball: 2. Swaps: 45")
    assert m.detokenize(toks) == "Ball: 2. Swaps: 45"
    text = m.render_chat([{"role": "user", "content": "Ball: 2. Swaps: 45"}])
    assert text.endswith("<|begin_header|>Huginn<|end_header|>\n\n")


def test_bad_input_raises():
    with pytest.raises(raven.RavenError, match="no-such.gguf"):
        raven.Model("/nonexistent/no-such.gguf")
    m = raven.Model(str(DEMO))
    with pytest.raises(raven.RavenError, match="exit"):
        m.session(exit="bogus")
    with pytest.raises(raven.RavenError, match="cache"):
        m.session(cache="sideways")
    with pytest.raises(raven.RavenError, match="cache_type"):
        m.session(cache_type="q4_0")
    with pytest.raises(raven.RavenError, match="cache_type"):
        m.logits([1, 2], steps=1, cache_type="f8")
    with pytest.raises(raven.RavenError):
        m.session(temperature=-1.0)
    with pytest.raises(raven.RavenError, match="outside the vocabulary"):
        m.session().generate([1, 2, 10**6])
    with pytest.raises(raven.RavenError, match="steps"):
        m.logits([1, 2], steps=0)
    with pytest.raises(raven.RavenError, match="context"):
        m.logits([1] * (m.context_length + 1), steps=1)
    with pytest.raises(raven.RavenError, match="context"):
        m.session(steps=1).generate([1] * (m.context_length + 1))
    with pytest.raises(TypeError):
        m.session().generate(3.5)
    with pytest.raises(raven.RavenError, match="type"):
        raven.convert(str(FIXTURE), "/tmp/x.gguf", "q3_k")


def test_the_gil_is_released_while_generating():
    """While one thread generates, Python code runs in another; and two threads generate at
    the same time, each with its session, with the single-thread results."""
    m = raven.Model(str(DEMO))
    prompt = "Ball: 1. Swaps: 35 13 24 51 23 45"

    def long_session():
        return m.session(steps=64, threads=1, ignore_eos=True, init_scale=0.0)

    want = long_session().generate(prompt, max_tokens=200, chat=True)
    state = {"started": False, "done": False}

    def worker():
        state["started"] = True
        state["result"] = long_session().generate(prompt, max_tokens=200, chat=True)
        state["done"] = True

    t = threading.Thread(target=worker)
    t.start()
    while not state["started"]:
        pass
    spins = 0
    while not state["done"]:
        spins += 1
    t.join()
    assert state["result"].tokens == want.tokens
    assert spins > 1000, f"the main thread ran {spins} loop iterations during the generation"

    spans = {}

    def timed(k):
        t0 = time.perf_counter()
        g = long_session().generate(prompt, max_tokens=200, chat=True)
        spans[k] = (t0, time.perf_counter(), g.tokens)

    ts = [threading.Thread(target=timed, args=(k,)) for k in range(2)]
    [x.start() for x in ts]
    [x.join() for x in ts]
    (a0, a1, ta), (b0, b1, tb) = spans[0], spans[1]
    assert ta == want.tokens and tb == want.tokens
    assert a0 < b1 and b0 < a1, "the two generations did not overlap"


@pytest.mark.parametrize(
    "fixture,case_name,steps",
    [("tiny-ouro", "decode.p0", 4), ("tiny-recurrent-llama", "decode.full.p0.r8", 8), ("tiny-recurrent-olmo", "decode.full.p0.r8", 8)],
)
def test_other_families_decode_to_the_official_tokens(tmp_path, fixture, case_name, steps):
    """Ouro and the retrofitted models from Python: converted, then greedy with a full cache."""
    d = ROOT / "tests" / "fixtures" / fixture
    j = json.loads((d / "reference.json").read_text())
    c = next(c for c in j["cases"] if c["name"] == case_name)
    out = tmp_path / f"{fixture}.gguf"
    raven.convert(str(d), str(out), "f32")
    m = raven.Model(str(out))
    s = m.session(steps=steps, init_scale=0.0, cache="full", temperature=0.0, ignore_eos=True)
    want = ids(c["new_tokens"])
    g = s.generate(j["prompt_token_ids"][c["prompt"]], max_tokens=len(want))
    assert g.tokens == want
    if fixture == "tiny-ouro":
        # The gate stops tokens early; a model without one refuses it.
        g = m.session(exit="gate:0.6", init_scale=0.0, temperature=0.0, ignore_eos=True).generate(
            j["prompt_token_ids"][0], max_tokens=8
        )
        assert min(g.steps) < 4 and max(g.steps) <= 4
    else:
        with pytest.raises(raven.RavenError, match="exit gate"):
            m.session(exit="gate")
