"""The generator actor's engine, as training drives it (in a process of its own, without Ray)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A ~5,000-token prompt is over vLLM-CPU's 4,096-token budget for one engine step, so with
# chunked prefill it is always prefilled in two parts; a short prompt goes with it.
CHILD = """
import json, sys
from actors.generator import GeneratorActor, Sampling
from drgrpo.seeds import request_seeds

gen = GeneratorActor(sys.argv[1], "float32", max_model_len=6144, device="cpu")
prompts = ["Long: " + "what is one plus one? " * 300, "Short: what is one plus one?"]
sampling = Sampling(temperature=0.5, top_p=1.0, max_new_tokens=4, seed=7)
seeds = request_seeds(7, len(prompts))
together = gen.generate(prompts, 2, sampling, seeds).groups
alone = [gen.generate([p], 2, sampling, [s]).groups[0] for p, s in zip(prompts, seeds)]
print("RESULT", json.dumps([[len(together[0][0].prompt_ids)]] + [
    [[c.response_ids for c in g] for g in groups] for groups in (together, alone)]), flush=True)
"""


def test_seeded_prompt_over_the_token_budget_samples_as_it_does_alone(tmp_path):
    """A seeded prompt longer than one engine step's token budget is sampled (vLLM-CPU could
    not rewind the seeded sampler of a prompt prefilled in parts: a demo rollout of 8 prompts
    x 8 samples failed with "CPU Generator does not use offset"), and each prompt's samples
    are the ones it gets alone: its seeds, not its batch, decide them."""
    from drgrpo.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny-long", max_position_embeddings=8192)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    (prompt_tokens,), together, alone = json.loads(result[-1].removeprefix("RESULT "))
    assert prompt_tokens > 4096
    assert [len(g) for g in together] == [2, 2]
    assert together == alone
