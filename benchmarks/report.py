"""performance.md from the suite's results: a summary of targets, then one section per part."""

from __future__ import annotations

import math
import time

KEYS = ("figures", "baseline", "ratios", "targets", "notes")


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def groups(data: dict, path: str = "") -> list[tuple[str, dict]]:
    """(path, {name: number}) for every dict of numbers in `data`, depth first:
    {"float32": {"vllm": {"tokens_per_s": 1}}} -> [("float32/vllm", {"tokens_per_s": 1})]."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    out = [(path, scalars)] if scalars else []
    for key, value in data.items():
        if isinstance(value, dict):
            out += groups(value, f"{path}/{key}" if path else str(key))
    return out


def target_rows(result: dict) -> list[tuple[str, str, str, str, str]]:
    """(part, target, value, bound, met) per target; one without a value and a verdict (a
    bare bound) is shown as not evaluated rather than guessed at."""
    rows = []
    for name, t in result["targets"].items():
        if isinstance(t, dict) and {"value", "target", "met"} <= t.keys():
            rows.append((result["name"], name, fmt(t["value"]), str(t["target"]),
                         "yes" if t["met"] else "**no**"))
        else:
            rows.append((result["name"], name, "-", fmt(t), "not evaluated"))
    return rows


def table(data: dict, head: str) -> list[str]:
    """Markdown tables with a row per name and a column per group (e.g. per dtype or variant),
    so like figures sit side by side; consecutive groups sharing most names share a table."""
    lines: list[str] = []
    found = groups(data)
    i = 0
    while i < len(found):
        names = list(found[i][1])
        j = i + 1
        while j < len(found) and _alike(names, found[j][1]):
            names += [n for n in found[j][1] if n not in names]
            j += 1
        cols = found[i:j]
        lines += [f"| {head} | " + " | ".join(path or "value" for path, _ in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        lines += [f"| {name} | " + " | ".join(fmt(g[name]) if name in g else "-"
                                              for _, g in cols) + " |" for name in names]
        lines.append("")
        i = j
    return lines


def _alike(names: list[str], group: dict) -> bool:
    shared = len(set(names) & group.keys())
    return shared * 2 >= min(len(names), len(group))


def performance_md(results: list[dict], quick: bool) -> str:
    rows = [row for r in results for row in target_rows(r)]
    met = sum(row[4] == "yes" for row in rows)
    unevaluated = sum(row[4] == "not evaluated" for row in rows)
    m = results[0]["machine"] if results else {}
    lines = [
        "# Benchmarks", "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {'--quick' if quick else 'full'} run, "
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"bf16 instructions: {', '.join(m.get('bf16_instructions', [])) or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + "; thread "
        "settings: " + (", ".join(f"{k}={v}" for k, v in m.get("thread_env", {}).items())
                        or "defaults") + ".", "",
        "Each part's figures and its baseline's were measured side by side in the same run on "
        "this machine; the load average beside each part says how busy it was.", "",
        "## Targets", "",
        f"{met} of {len(rows) - unevaluated} targets met"
        + (f"; {unevaluated} not evaluated" if unevaluated else "")
        + (f"; part(s) failed: {', '.join(r['name'] for r in results if r['error'])}"
           if any(r["error"] for r in results) else "") + ".", "",
        "| part | target | value | bound | met |", "|---|---|---:|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows), "",
    ]
    for r in results:
        mm = r["machine"]
        lines += [f"## {r['name']}", "",
                  f"{r['seconds']:.0f} s; load average (1, 5, 15 min) {fmt(mm['load_avg_before'])}"
                  f" before, {fmt(mm['load_avg_after'])} after.", ""]
        if r["error"]:
            lines += ["**Failed:**", "", "```", r["error"], "```", ""]
        lines += table(r["figures"], "figure") + table(r["baseline"], "baseline")
        lines += table(r["ratios"], "ratio")
        lines += [f"- {note}" for note in r["notes"]] + ([""] if r["notes"] else [])
    return "\n".join(lines)
