"""Raven from Python: recurrent-depth latent-reasoning language models (Huginn) on CPUs.

    import raven
    m = raven.Model("model.gguf")
    s = m.session(steps=32, exit="latent-diff", budget_ms=None, cache=None)
    g = s.generate("Ball: 1. Swaps: 35 13 24", max_tokens=8, chat=True)
    g.text, g.steps, g.mean_steps, g.finish_reason
    for piece in s.stream("...", max_tokens=64):
        print(piece.text, end="", flush=True)
    m.logits([1, 2, 3], steps=8)            # numpy float32 array [T, V]

Every call that computes releases the GIL. Errors are raven.RavenError.
"""

from . import _raven
from ._raven import Generation, Piece, RavenError, Session, Stream, __version__, convert

__all__ = [
    "Model",
    "Session",
    "Generation",
    "Piece",
    "Stream",
    "RavenError",
    "convert",
    "__version__",
]


class Model(_raven.Model):
    """A loaded GGUF model (`Model(path, mmap=True)`), shared by any number of sessions."""

    def logits(
        self,
        tokens,
        steps=None,
        *,
        init_scale=0.0,
        seed=0,
        exit=None,
        max_steps=None,
        min_steps=1,
        cache="full",
        cache_type="f32",
        decode_from=None,
        threads=0,
        return_steps=False,
    ):
        """`raven logits`: a float32 array [T, V], the model's output after `steps` core
        iterations for every position of `tokens` (the prompt in one pass; with `exit`, each
        token on its own as the reference's adaptive forward; with `decode_from=N`, the first N
        in one pass and the rest through the KV cache). `return_steps=True` also returns the
        iterations each token ran."""
        import numpy as np

        raw, ran, t, v = self._logits(
            list(tokens),
            steps,
            init_scale,
            seed,
            exit,
            max_steps,
            min_steps,
            cache,
            cache_type,
            decode_from,
            threads,
        )
        out = np.frombuffer(raw, dtype="<f4").reshape(t, v)
        return (out, np.asarray(ran, dtype=np.int32)) if return_steps else out
