"""Soak test: 50 SIGKILLs of one `specc run`, resuming after each, against an uninterrupted run.

One run (torch, CPU, builtin tiny-llama + capitalization, batch 4 × grad_accum 2, checkpoint every 10
steps, evaluation every 30, keep_last 2) is killed with SIGKILL at 50 points in increasing step order
and resumed (`specc run SPEC`, resume auto) after each, until it completes. Kill points:

- hook points through specc's fault hook (specc/engine/faults.py, SPECC_FAULT=kill@<point>:<step>):
    step   after step N's metrics line, before its evaluation/checkpoint
    micro  between the two micro-batches of step N (mid-step: gradients half accumulated)
    save   inside checkpoint N's write (state and adapter in the temporary directory, no manifest yet)
    best   inside the best/ publish after the evaluation at step N
    final  inside the final adapter/ publish
- timer kills (asynchronous, at an arbitrary instruction): this script watches metrics.jsonl and sends
  SIGKILL a random delay after step N's line appears:
    timer-step  delay uniform in [0, 0.9 × the reference's median step time): lands inside step N+1
    timer-save  N a checkpoint step; delay uniform in [0, 1.5 × median save time): lands in/around the save

A point passes when the kill happened (exit by SIGKILL), the next process resumed, and every per-step
record in metrics.jsonl so far (loss, grad_norm, lr, tokens, val_loss) is bit-identical to the
uninterrupted reference (JSON floats round-trip exactly). At the end: the completed run's metrics.jsonl
holds each step exactly once, identical to the reference; the final adapter, best/ adapter and the last
checkpoint's state.safetensors (adapter, AdamW moments, RNG) are bit-identical. A second uninterrupted
run checks that the reference itself is reproducible.

Usage: python bench/soak_resume.py [--points 50] [--steps 240] [--seed 0] [--threads 1] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SPECC, builtin_paths, load_str, machine, median, tail, thread_env, write_spec  # noqa: E402

CKPT_EVERY, EVAL_EVERY = 10, 30
COMPARED = ("loss", "grad_norm", "lr", "tokens", "val_loss", "val_tokens")


# ---------------------------------------------------------------------------------------- records
def records(run_dir: Path) -> list[dict]:
    """Parsed metrics.jsonl lines (a line torn by a kill is skipped)."""
    out = []
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def keyed(recs: list[dict]) -> dict[tuple[str, int], dict]:
    """(kind, step) -> compared fields, kind 'train' or 'val'."""
    out = {}
    for r in recs:
        kind = "train" if "loss" in r else "val" if "val_loss" in r else None
        if kind:
            out[(kind, r["step"])] = {k: r[k] for k in COMPARED if k in r}
    return out


def mismatches(recs: list[dict], ref: dict[tuple[str, int], dict]) -> list[str]:
    bad = []
    for r in recs:
        kind = "train" if "loss" in r else "val" if "val_loss" in r else None
        if not kind:
            continue
        want = ref.get((kind, r["step"]))
        got = {k: r[k] for k in COMPARED if k in r}
        if want != got:
            bad.append(f"{kind} step {r['step']}: {got} != reference {want}")
    return bad


def tensors(path: Path) -> dict[str, bytes]:
    from safetensors.numpy import load_file

    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in load_file(str(path)).items()}


def same_tensors(a: Path, b: Path) -> tuple[bool, str]:
    if not a.exists() or not b.exists():
        return False, f"missing {a if not a.exists() else b}"
    ta, tb = tensors(a), tensors(b)
    if ta.keys() != tb.keys():
        return False, f"different keys ({len(ta)} vs {len(tb)})"
    diff = [k for k in ta if ta[k] != tb[k]]
    return (not diff), (f"{len(diff)} of {len(ta)} tensors differ, e.g. {diff[0]}" if diff else f"{len(ta)} tensors identical")


# ------------------------------------------------------------------------------------------ plan
def plan_points(rng: random.Random, n: int, steps: int, best_steps: list[int]) -> list[dict]:
    """n kill points with strictly increasing steps, at least 3 apart (a timer kill may overrun a step)."""
    # for n = 50: best 4, save 12, micro 8, timer-save 5, timer-step 8, step 12, final 1
    share = {"best": 4, "save": 12, "micro": 8, "timer-save": 5, "timer-step": 8}
    quota = {k: round(v * (n - 1) / 49) for k, v in share.items()}
    quota["best"] = min(quota["best"], len(best_steps))
    quota["step"] = max(0, n - 1 - sum(quota.values()))
    ckpt_steps = [s for s in range(CKPT_EVERY, steps, CKPT_EVERY)]
    pools = {
        "best": best_steps,
        "save": ckpt_steps,
        "timer-save": [s for s in ckpt_steps if s % EVAL_EVERY],
        "micro": list(range(1, steps)),
        "timer-step": list(range(1, steps - 3)),
        "step": list(range(1, steps)),
    }
    for _ in range(1000):
        taken: dict[int, str] = {}
        ok = True
        for kind in ("best", "save", "timer-save", "micro", "timer-step", "step"):   # most constrained first
            free = [s for s in pools[kind] if all(abs(s - t) >= 3 for t in taken)]
            if len(free) < quota[kind]:
                ok = False
                break
            for s in rng.sample(free, quota[kind]):
                taken[s] = kind
        if ok:
            points = [{"kind": k, "step": s} for s, k in sorted(taken.items())]
            return points + [{"kind": "final", "step": steps}]
    raise SystemExit(f"cannot place {n} kill points in {steps} steps; use more --steps")


# ------------------------------------------------------------------------------------------- run
def launch(work: Path, spec: Path, threads: int, log: Path, fault: str | None) -> subprocess.Popen:
    env = thread_env(threads)
    env.pop("SPECC_FAULT", None)
    if fault:
        env["SPECC_FAULT"] = fault
    with open(log, "w") as fh:   # the child keeps its own copy of the descriptor
        return subprocess.Popen([*SPECC, "run", str(spec)], cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT)


def wait_line_then_kill(proc: subprocess.Popen, metrics: Path, step: int, delay: float, timeout: float = 900) -> bool:
    """SIGKILL `delay` s after metrics.jsonl gets step `step`'s training line; False if the process ended first."""
    needle = f'{{"step": {step}, "loss"'
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            return False
        try:
            if needle in metrics.read_text(encoding="utf-8", errors="replace"):
                break
        except OSError:
            pass
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill plan and timer delays")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dir", type=Path, help="work directory (default: a new one under $TMPDIR)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    model_dir, data = builtin_paths()
    root = Path(args.dir or tempfile.mkdtemp(prefix="specc-soak-"))
    if root.exists() and any(root.iterdir()):
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    spec_args = dict(experiment="soak", model_dir=model_dir, data=data, steps=args.steps, batch_size=4, grad_accum=2,
                     eval_every=EVAL_EVERY, checkpoint_every=CKPT_EVERY, keep_last=2, early_stopping=False)
    m = machine()
    print(f"# {m['cpu']}, {m['cores']} cores, torch threads {args.threads}; {args.steps} steps, batch 4 x accum 2, "
          f"checkpoint every {CKPT_EVERY}, eval every {EVAL_EVERY}; work dir {root}", flush=True)

    t0 = time.perf_counter()
    refs = []
    for name in ("ref-a", "ref-b"):
        work = root / name
        work.mkdir(parents=True, exist_ok=True)
        spec = write_spec(work / "soak.yaml", **spec_args)
        proc = launch(work, spec, args.threads, work / "log.txt", None)
        if proc.wait() != 0:
            raise SystemExit(f"reference run failed:\n{tail(work / 'log.txt')}")
        refs.append(next(work.glob("runs/*/*/summary.json")).parent)
    ref_dir = refs[0]
    ref_recs = records(ref_dir)
    ref = keyed(ref_recs)
    repro = not mismatches(records(refs[1]), ref) and same_tensors(ref_dir / "adapter" / "adapter_model.safetensors",
                                                                    refs[1] / "adapter" / "adapter_model.safetensors")[0]
    step_s = median(r["step_s"] for r in ref_recs if "step_s" in r)
    save_s = median(r["seconds"] for r in ref_recs if r.get("event") == "checkpoint")
    print(f"reference: {len([k for k in ref if k[0] == 'train'])} steps, median step {step_s * 1e3:.0f} ms, "
          f"median save {save_s * 1e3:.0f} ms; second uninterrupted run identical: {repro} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    best, best_steps = float("inf"), []
    for r in ref_recs:
        if "val_loss" in r:
            if r["val_loss"] < best and 0 < r["step"] < args.steps:
                best_steps.append(r["step"])
            best = min(best, r["val_loss"])
    points = plan_points(rng, args.points, args.steps, best_steps)

    work = root / "chain"
    work.mkdir(parents=True, exist_ok=True)
    spec = write_spec(work / "soak.yaml", **spec_args)
    run_dir = work / "runs" / "soak" / "main"
    metrics = run_dir / "metrics.jsonl"

    print(f"{'#':>3} {'kill point':28} {'killed':6} {'in-flight tmp':13} {'resumed at':>10} {'metrics':8} result  load")
    results = []
    pending: dict | None = None   # the previous point, checked by the segment that resumes after it

    def check_resume(seg_log: Path, pending: dict) -> None:
        found = re.findall(r"resumed from .* at step (\d+)", seg_log.read_text(errors="replace"))
        pending["resumed_at"] = int(found[-1]) if found else (0 if "resumed from" not in seg_log.read_text() else None)
        pending["resume_ok"] = pending["resumed_at"] is not None
        bad = mismatches(records(run_dir), ref)
        pending["metrics_ok"] = not bad
        pending["detail"] = bad[:2]
        pending["pass"] = pending["killed"] and pending["resume_ok"] and pending["metrics_ok"]
        results.append(pending)
        label = (f"{pending['kind']}:{pending['step']}" + (f" +{pending['delay'] * 1e3:.0f}ms" if "delay" in pending else ""))
        print(f"{len(results):>3} {label:28} {str(pending['killed']):6} {pending['tmp'] or '-':13} "
              f"{pending['resumed_at'] if pending['resumed_at'] is not None else '?':>10} "
              f"{'same' if pending['metrics_ok'] else 'DIFF':8} {'PASS' if pending['pass'] else 'FAIL'}  {load_str()}",
              flush=True)
        for d in pending["detail"]:
            print(f"      {d}")

    for i, p in enumerate(points):
        seg_log = work / f"segment-{i:02d}.log"
        kind, step = p["kind"], p["step"]
        if kind.startswith("timer"):
            proc = launch(work, spec, args.threads, seg_log, None)
            p["delay"] = rng.uniform(0, 0.9 * step_s) if kind == "timer-step" else rng.uniform(0, 1.5 * save_s)
            killed = wait_line_then_kill(proc, metrics, step, p["delay"])
        else:
            proc = launch(work, spec, args.threads, seg_log, f"kill@{kind}:{step}")
            rc = proc.wait()
            killed = rc == -signal.SIGKILL
        if not killed:
            proc.wait()
        p["killed"] = killed
        p["rc"] = proc.returncode
        tmp = sorted(x.name for x in (run_dir / "checkpoints").glob("*.tmp-*")) if (run_dir / "checkpoints").is_dir() else []
        tmp += sorted(x.name for x in run_dir.glob("*.tmp-*")) if run_dir.is_dir() else []
        p["tmp"] = ",".join(t.split(".tmp-")[0] for t in tmp)
        if pending is not None:
            check_resume(seg_log, pending)
        pending = p
        if not killed:
            print(f"kill point {kind}:{step} did not fire (exit {proc.returncode}); see {seg_log}\n{tail(seg_log, 8)}")
            break

    # the last segment: run to completion
    seg_log = work / "segment-final.log"
    proc = launch(work, spec, args.threads, seg_log, None)
    rc = proc.wait()
    if pending is not None:
        check_resume(seg_log, pending)
    final = records(run_dir)
    train_steps = [r["step"] for r in final if "loss" in r]
    exact_once = sorted(train_steps) == list(range(1, args.steps + 1))
    metrics_same = not mismatches(final, ref) and keyed(final).keys() == ref.keys()
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    checks = {
        "final process exit 0 and status completed": rc == 0 and summary.get("status") == "completed",
        f"metrics.jsonl: steps 1..{args.steps} each exactly once": exact_once,
        "metrics.jsonl identical to the reference (loss, grad_norm, lr, tokens, val_loss)": metrics_same,
    }
    for label, rel in (("adapter/", "adapter/adapter_model.safetensors"), ("best/", "best/adapter_model.safetensors")):
        ok, why = same_tensors(run_dir / rel, ref_dir / rel)
        checks[f"{label} adapter tensors bit-identical ({why})"] = ok
    last = f"checkpoints/step_{args.steps:07d}/state.safetensors"
    cands = sorted((ref_dir / "checkpoints").glob("step_*"))
    if cands:
        last = f"checkpoints/{cands[-1].name}/state.safetensors"
    ok, why = same_tensors(run_dir / last, ref_dir / last)
    checks[f"last checkpoint state (adapter, AdamW, RNG) bit-identical ({why})"] = ok
    n_pass = sum(r["pass"] for r in results)
    print()
    kinds = ("step", "micro", "save", "best", "final", "timer-step", "timer-save")
    by_kind = ", ".join(f"{k} {sum(r['kind'] == k for r in results)}" for k in kinds)
    print(f"kill points: {n_pass}/{len(results)} passed ({by_kind}); "
          f"restarts recorded in summary: {summary.get('restarts')}")
    for label, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    print(f"  {'PASS' if repro else 'FAIL'}  a second uninterrupted run is identical to the first")
    all_ok = n_pass == len(results) == args.points and all(checks.values()) and repro
    print(f"\nSOAK {'PASSED' if all_ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s")
    (root / "results.json").write_text(json.dumps({"points": results, "checks": checks, "reproducible": repro}, indent=2,
                                                  default=str))
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
