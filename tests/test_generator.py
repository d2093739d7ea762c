"""The generator actor's engine, as training drives it (in a process of its own, without Ray)."""

import json
import os
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
    from demo.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny-long", max_position_embeddings=8192)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    (prompt_tokens,), together, alone = json.loads(result[-1].removeprefix("RESULT "))
    assert prompt_tokens > 4096
    assert [len(g) for g in together] == [2, 2]
    assert together == alone


# The demo's model in its dtype (bfloat16, float32 on a CPU without bfloat16 arithmetic), a
# rollout twice the demo's (8 prompts x 8 samples), sampled again and again with the same
# seeds; the prefix cache is reset in between, as after a sync.
REPEAT = """
import json, os, sys
from actors.generator import GeneratorActor, Sampling
from drgrpo.precision import native_dtype
from drgrpo.seeds import request_seeds
from drgrpo.templates import apply_template

home = os.path.expanduser("~/.cache/drgrpo/demo")
rows = [json.loads(line) for line in open(f"{home}/arith/train.jsonl")][:8]
prompts = [apply_template("qwen_math", r["problem"]) for r in rows]
gen = GeneratorActor(f"{home}/smollm2-135m-instruct", native_dtype("cpu"), max_model_len=512,
                     device="cpu")
sampling = Sampling(temperature=0.5, top_p=1.0, max_new_tokens=8, seed=7, logprobs=True)
rounds = []
for _ in range(6):
    groups = gen.generate(prompts, 8, sampling, request_seeds(7, len(prompts))).groups
    rounds.append([[c.response_ids, c.logprobs] for group in groups for c in group])
    assert gen.llm.reset_prefix_cache()
print("RESULT", json.dumps(rounds), flush=True)
"""


def test_a_seeded_rollout_is_the_same_every_time_on_the_demo_model(demo_home):
    """Same seeds, same weights, same samples and log-probs, whenever the engine runs them.
    `LLM.generate` handed the engine-core process its requests one by one while it already
    scheduled batches, so which requests shared a rollout's first batches depended on timing,
    and with them the bfloat16 numerics: 4 of 6 such rounds differed in their log-probs, and
    two demo runs of one seed parted at step 3 (actors.generator._run_all_at_once)."""
    proc = subprocess.run([sys.executable, "-c", REPEAT], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HOME": str(demo_home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    rounds = json.loads(result[-1].removeprefix("RESULT "))
    assert len(rounds[0]) == 64
    differing = [k for k, r in enumerate(rounds) if r != rounds[0]]
    assert not differing, f"rounds {differing} differ from round 0"
