"""`raven serve` on the demo model, driven by the official `openai` client, by curl and by a
bounded load test on loopback: answers, streaming, Raven's controls, bad requests, many
concurrent streaming clients (some disconnecting), memory, shutdown."""
import http.client
import json
import os
import random
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import DEMO, RAVEN_BIN

MODEL = "raven-demo"


class Server:
    def __init__(self, *args):
        self.p = subprocess.Popen(
            [str(RAVEN_BIN), "serve", "--port", "0", "--steps", "32", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.p.stderr.readline()
        m = re.search(r"http://([\d.]+):(\d+)", line)
        assert m, f"raven serve said: {line!r}"
        self.host, self.port = m.group(1), int(m.group(2))
        self.base = f"http://{self.host}:{self.port}"

    def rss_kb(self):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    def request(self, method, path, body=None, raw=None, timeout=60):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out = r.status, r.getheaders(), r.read()
        c.close()
        return out

    def health(self):
        return json.loads(self.request("GET", "/health")[2])

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=20)
        finally:
            if self.p.poll() is None:
                self.p.kill()


@pytest.fixture(scope="module")
def server():
    # Answers run to max_tokens (longer streams); two generations at a time.
    s = Server("--ignore-eos", "--parallel", "2")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def plain():
    s = Server()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def client(plain):
    from openai import OpenAI

    return OpenAI(base_url=plain.base + "/v1", api_key="none", max_retries=0)


def puzzle(rng, swaps):
    """A fresh cup-swap puzzle (5 cups, swaps written low cup first as in training:
    tools/train_demo/task.py) and where the ball ends."""
    ball = rng.randint(1, 5)
    pos, moves = ball, []
    for _ in range(swaps):
        a, b = sorted(rng.sample(range(1, 6), 2))
        moves.append(f"{a}{b}")
        pos = b if pos == a else a if pos == b else pos
    return f"Ball: {ball}. Swaps: {' '.join(moves)}", str(pos)


def test_openai_client_answers_a_fresh_puzzle(client):
    rng = random.Random(time.time_ns())
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    for _ in range(3):
        text, answer = puzzle(rng, rng.randint(2, 6))
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            max_tokens=4,
            temperature=0,
        )
        assert r.choices[0].message.content.strip() == answer, text
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 5
        assert r.raven["max_iterations"] == 32


def test_every_cache_type_answers(client):
    """`cache_type` reaches the session: f32, f16 (the default) and q8_0 caches answer alike."""
    rng = random.Random(11)
    for _ in range(2):
        text, answer = puzzle(rng, rng.randint(2, 6))
        for ty in ["f32", "f16", "q8_0"]:
            r = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": text}],
                max_tokens=4,
                temperature=0,
                extra_body={"cache_type": ty},
            )
            assert r.choices[0].message.content.strip() == answer, (ty, text)


def test_streaming_delivers_the_same_text(client):
    msgs = [{"role": "user", "content": "Ball: 4. Swaps: 14 23 45 12 35"}]
    whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=8, temperature=0, stream=True
    )
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert text == whole.choices[0].message.content and finish == "stop"
    # /v1/completions too
    c = client.completions.create(model=MODEL, prompt="Ball: 2. Swaps:", max_tokens=6, temperature=0)
    s = client.completions.create(
        model=MODEL, prompt="Ball: 2. Swaps:", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(x.choices[0].text for x in s) == c.choices[0].text


def test_steps_and_exit_change_the_reported_iterations(client):
    msgs = [{"role": "user", "content": "Ball: 5. Swaps: 15 24 13 45 23 12 34 15"}]

    def iters(**extra):
        r = client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=3, temperature=0, extra_body=extra
        )
        return r.raven["iterations"], r.raven["mean_iterations"], r.raven["early_exits"]

    it4, mean4, _ = iters(steps=4)
    assert it4 and all(k == 4 for k in it4) and mean4 == 4
    it32, _, early32 = iters(steps=32)
    assert all(k == 32 for k in it32) and early32 == 0
    itx, meanx, earlyx = iters(steps=32, exit="latent-diff:0.03")
    assert earlyx >= 1 and meanx < 32, itx
    itb, _, _ = iters(steps=32, budget_ms=1000, cache="full")
    assert all(1 <= k <= 32 for k in itb)


def test_curl(plain):
    body = json.dumps({
        "model": MODEL, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Ball: 2. Swaps: 45"}],
    })
    url = plain.base + "/v1/chat/completions"
    out = subprocess.run(
        ["curl", "-sS", "-H", "Content-Type: application/json", "-d", body, url],
        check=True, capture_output=True, text=True,
    ).stdout
    r = json.loads(out)
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["content"] == "2"
    out = subprocess.run(
        ["curl", "-sS", "-N", "-H", "Content-Type: application/json", "-d",
         json.dumps({**json.loads(body), "stream": True}), url],
        check=True, capture_output=True, text=True,
    ).stdout
    events = [l[6:] for l in out.splitlines() if l.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "2"
    health = json.loads(subprocess.run(["curl", "-sS", plain.base + "/health"],
                                       check=True, capture_output=True, text=True).stdout)
    assert health["status"] == "ok"


@pytest.mark.parametrize(
    "path,raw,status,param",
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}), 404, "model"),
        ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}), 400, "max_tokens"),
        ("/v1/completions", json.dumps({"model": MODEL, "prompt": "Ball: 1. " * 200}), 400, "prompt"),
        ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": []}), 400, "messages"),
        ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "exit": "sideways"}), 400, "exit"),
        ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 7}), 400, "temperature"),
        ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "steps": 0}), 400, "steps"),
        ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "cache_type": "q4_0"}), 400, "cache_type"),
        ("/v1/completions", json.dumps({"model": MODEL, "prompt": [1, 2, 99999]}), 400, "prompt"),
        ("/v1/completions", b"x" * (2 << 20), 413, None),
        ("/v1/nothing", b"{}", 404, None),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(plain, path, raw, status, param):
    st, _, body = plain.request("POST", path, raw=raw)
    assert st == status, body
    err = json.loads(body)["error"]
    assert err["message"] and err["type"]
    if param:
        assert err["param"] == param, err
    if path == "/v1/completions" and status == 400 and param == "prompt" and "Ball" in str(raw):
        assert err["code"] == "context_length_exceeded"
    st, _, body = plain.request("POST", "/v1/chat/completions", body={
        "model": MODEL, "max_tokens": 2, "temperature": 0,
        "messages": [{"role": "user", "content": "Ball: 2. Swaps: 45"}]})
    assert st == 200 and json.loads(body)["choices"][0]["message"]["content"] == "2"


def raven_run_json(*args):
    """`raven run ... --json` on the demo model: its one JSON object."""
    out = subprocess.run([str(RAVEN_BIN), "run", *args, "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def test_parallel_sampler_equals_raven_run(server):
    """`"sampler": "parallel"` in deterministic settings (init_scale 0, noise 0, temperature 0)
    gives the tokens, text and per-position iterations of `raven run --sampler parallel --json`
    on the same model and prompt (the `server` fixture runs with --ignore-eos and --steps 32),
    whole and streamed, in the default (official, the paper's conservative setting) and the
    corrected mode, on both endpoints."""
    question = "Ball: 3. Swaps: 13 25 34"
    settings = [
        ({}, []),
        ({"parallel_mode": "corrected", "inner_steps": 2, "wavefront": 4, "ema": 0,
          "headway": 2},
         ["--parallel-mode", "corrected", "--inner-steps", "2", "--wavefront", "4", "--ema", "0",
          "--headway", "2"]),
    ]
    for knobs, flags in settings:
        for chat in (True, False):
            run = ["--chat"] if chat else []
            want = raven_run_json(*run, "-p", question, "--sampler", "parallel", "--ignore-eos",
                                  "--steps", "32", "--init-scale", "0", "--noise", "0",
                                  "--temp", "0", "-n", "16", *flags)
            assert want["counters"]["sampler"] == "parallel" and want["tokens"]
            body = {"model": MODEL, "max_tokens": 16, "temperature": 0, "init_scale": 0,
                    "sampler": "parallel", "noise": 0, **knobs}
            if chat:
                path = "/v1/chat/completions"
                body["messages"] = [{"role": "user", "content": question}]
            else:
                path = "/v1/completions"
                body["prompt"] = question
            st, _, raw = server.request("POST", path, body=body)
            assert st == 200, raw
            r = json.loads(raw)
            c = r["choices"][0]
            text = c["message"]["content"] if chat else c["text"]
            at = f"{knobs} chat={chat}"
            assert text == want["text"], at
            assert r["usage"]["completion_tokens"] == len(want["tokens"]), at
            assert r["usage"]["prompt_tokens"] == want["prompt_tokens"], at
            assert r["raven"]["sampler"] == "parallel"
            assert r["raven"]["iterations"] == want["steps"], at
            for k in ("sampler_steps", "core_passes", "tokens_forward", "cache_clears",
                      "standing_waves", "seq_len"):
                assert r["raven"]["parallel"][k] == want["counters"][k], (at, k)
            assert r["raven"]["parallel"]["mode"] == knobs.get("parallel_mode", "official")
            assert c["finish_reason"] == "length"
            if chat:
                assert stream_text(server.host, server.port, body) == (want["text"], "length")
    # The plain sampler is unchanged, and says so.
    st, _, raw = server.request("POST", "/v1/completions", body={
        "model": MODEL, "prompt": question, "max_tokens": 4, "temperature": 0})
    assert st == 200 and json.loads(raw)["raven"]["sampler"] == "plain"
    assert "parallel" not in json.loads(raw)["raven"]


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"sampler": "parallel", "inner_steps": 0}, "inner_steps"),
        ({"sampler": "parallel", "inner_steps": "four"}, "inner_steps"),
        ({"sampler": "parallel", "headway": 0}, "headway"),
        ({"sampler": "parallel", "wavefront": -1}, "wavefront"),
        ({"sampler": "parallel", "ema": 1.5}, "ema"),
        ({"sampler": "parallel", "noise": -0.5}, "noise"),
        ({"sampler": "parallel", "noise_sqrt": "yes"}, "noise_sqrt"),
        ({"sampler": "parallel", "max_sampler_steps": 0}, "max_sampler_steps"),
        ({"sampler": "parallel", "parallel_mode": "sideways"}, "parallel_mode"),
        ({"sampler": "parallel", "exit": "kl"}, "exit"),
        ({"sampler": "parallel", "exit": "none", "wavefront": 4}, "wavefront"),
        ({"sampler": "parallel", "budget_ms": 10}, "budget_ms"),
        ({"sampler": "turbo"}, "sampler"),
        ({"sampler": 1}, "sampler"),
        ({"wavefront": 8}, "wavefront"),
    ],
)
def test_parallel_sampler_refuses_invalid_knobs_naming_the_field(plain, extra, param):
    for path, body in [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Ball: 2. Swaps: 45"}]}),
        ("/v1/completions", {"prompt": "Ball: 2. Swaps: 45"}),
    ]:
        st, _, raw = plain.request("POST", path, body={"model": MODEL, "max_tokens": 4, **body,
                                                       **extra})
        assert st == 400, raw
        err = json.loads(raw)["error"]
        assert err["param"] == param, err
        assert param in err["message"] and "--" not in err["message"], err
        assert err["type"] == "invalid_request_error"


def test_disconnect_cancels_a_long_parallel_generation(server):
    """The parallel sampler stops at its next core iteration when the client goes away. Here
    (corrected mode, a wavefront of 1, the fixed rule) every token takes 4096 iterations: the
    whole answer would take over 5 s on one thread."""
    body = {"model": MODEL, "max_tokens": 230, "temperature": 0, "steps": 4096,
            "sampler": "parallel", "parallel_mode": "corrected", "exit": "none", "wavefront": 1,
            "messages": [{"role": "user", "content": "Ball: 1. Swaps: 12"}]}
    t0 = time.perf_counter()
    assert stream_text(server.host, server.port, body, disconnect_after=1) is None
    while server.health()["running"] != 0:
        assert time.perf_counter() - t0 < 2.5, "the generation was not cancelled"
        time.sleep(0.02)


def stream_text(host, port, body, disconnect_after=None):
    """Streams a chat completion; returns (text, finish_reason), or None after disconnecting
    once `disconnect_after` content chunks have arrived."""
    c = http.client.HTTPConnection(host, port, timeout=120)
    c.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    text, finish, n = "", None, 0
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        ch = json.loads(data)
        delta = ch["choices"][0]["delta"].get("content")
        if delta:
            text += delta
            n += 1
            if disconnect_after is not None and n >= disconnect_after:
                c.sock.close()
                c.close()
                return None
        finish = ch["choices"][0]["finish_reason"] or finish
    c.close()
    return text, finish


def test_load_32_streaming_clients(server):
    """32 concurrent streaming clients × 4 requests each: every completed response equals the
    greedy single-client answer of its prompt; every fourth client disconnects mid-stream on
    its second request; the server then holds no generation and its memory is back near its
    idle level. Bounded: 128 requests on loopback, a few seconds."""
    rng = random.Random(7)
    prompts = [puzzle(rng, rng.randint(1, 8))[0] for _ in range(8)]
    bodies = [
        {"model": MODEL, "max_tokens": 48, "temperature": 0, "steps": 8,
         "messages": [{"role": "user", "content": p}]}
        for p in prompts
    ]
    want = [stream_text(server.host, server.port, b) for b in bodies]
    assert all(w[1] == "length" and len(w[0]) > 10 for w in want)
    for _ in range(2):  # warm up allocator arenas of the worker threads
        stream_text(server.host, server.port, bodies[0])
    idle_kb = server.rss_kb()
    errors, done = [], [0]
    lock = threading.Lock()

    def client(k):
        try:
            for j in range(4):
                i = (k + j) % len(bodies)
                leave = 3 if (k % 4 == 0 and j == 1) else None
                got = stream_text(server.host, server.port, bodies[i], disconnect_after=leave)
                if got is None:
                    continue
                if got != want[i]:
                    errors.append((k, j, got, want[i]))
                with lock:
                    done[0] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((k, repr(e)))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    secs = time.perf_counter() - t0
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert done[0] == 32 * 4 - 8
    tokens = done[0] * 48
    print(f"\nload: {done[0]} complete streams ({tokens} tokens) in {secs:.2f} s: "
          f"{done[0] / secs:.1f} requests/s, {tokens / secs:.0f} tokens/s")
    deadline = time.time() + 10
    while server.health()["admitted"] != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert server.health()["admitted"] == 0
    after_kb = server.rss_kb()
    print(f"RSS idle {idle_kb} KB, after {after_kb} KB")
    assert after_kb <= idle_kb + 8 * 1024, (idle_kb, after_kb)


def test_disconnect_cancels_a_long_generation(server):
    body = {"model": MODEL, "max_tokens": 200, "temperature": 0, "steps": 4096,
            "messages": [{"role": "user", "content": "Ball: 1. Swaps: 12"}]}
    t0 = time.perf_counter()
    assert stream_text(server.host, server.port, body, disconnect_after=1) is None
    while server.health()["running"] != 0:
        assert time.perf_counter() - t0 < 5, "the generation was not cancelled"
        time.sleep(0.02)
    # Full generation would take far longer: 200 tokens × 4096 iterations.


def test_queue_limit_gives_503_with_retry_after():
    s = Server("--parallel", "1", "--queue", "1", "--ignore-eos")
    try:
        body = {"model": MODEL, "max_tokens": 100, "temperature": 0, "steps": 2048,
                "messages": [{"role": "user", "content": "Ball: 1. Swaps: 12"}]}
        results = []

        def go():
            results.append(s.request("POST", "/v1/chat/completions", body=body, timeout=120))

        ts = [threading.Thread(target=go) for _ in range(3)]
        for t in ts:
            t.start()
            time.sleep(0.2)
        rejected = [r for r in results if r[0] == 503]
        deadline = time.time() + 5
        while not rejected and time.time() < deadline:
            time.sleep(0.05)
            rejected = [r for r in results if r[0] == 503]
        assert rejected, [r[0] for r in results]
        st, headers, body_ = rejected[0]
        assert dict(headers).get("retry-after") == "1"
        assert json.loads(body_)["error"]["code"] == "server_overloaded"
    finally:
        assert s.stop() == 0  # SIGTERM cancels the running generations and exits cleanly
        for t in ts:
            t.join(timeout=30)


def test_padded_vocabulary_is_never_served(tmp_path):
    """A model whose embedding (1024 rows) is larger than its tokenizer (the demo's 294 ids):
    sampled completions at temperature 1 never contain an id the tokenizer cannot decode (which
    used to end the generation with an error)."""
    from conftest import ROOT

    hf = tmp_path / "hf"
    subprocess.run([str(RAVEN_BIN), "synth", "--hf", str(hf), "--shape", "huginn-0125/55",
                    "--layers", "1,1,1", "--vocab", "1024", "--tokenizer",
                    str(ROOT / "models/demo/hf/tokenizer.json")], check=True)
    gguf = tmp_path / "padded.gguf"
    subprocess.run([str(RAVEN_BIN), "convert", str(hf), "-o", str(gguf), "--type", "q8_0"],
                   check=True, capture_output=True)
    s = Server("-m", str(gguf), "--ignore-eos")
    try:
        for seed in range(4):
            st, _, body = s.request("POST", "/v1/completions", body={
                "model": "padded", "prompt": "Ball: 3. Swaps:", "max_tokens": 40, "steps": 2,
                "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": seed})
            assert st == 200, body
            r = json.loads(body)
            assert r["usage"]["completion_tokens"] == 40 and r["choices"][0]["text"]
    finally:
        assert s.stop() == 0
