"""GrokFast paper benchmark on the training engine (not a test).

1. ``modular_arithmetic`` (x*y mod 97) with Grokfast-EMA (alpha 0.98, lamb 2.0, Adam lr 1e-3,
   betas 0.9/0.98, weight decay 0.005, batch 512, 10-step lr warmup), seed 0, the paper's
   model (``block_style="grokfast_paper"``, position table of 5) and data order
   (``data_order="paper"``): steps until the full validation set reaches 95 % accuracy
   (paper: 910).
2. The baseline without the filter (weight decay 0) for the same number of steps (or
   ``--baseline-steps``): its validation accuracy there (paper: needs 39,890 steps to 95 %).
3. Engine overhead: seconds per step of ``Trainer`` vs a bare PyTorch loop doing the same
   work (same model class, data, GrokFast-EMA, eval every 10 steps), interleaved in this run.

Usage::

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/grokfast_paper.py [--max-steps 3000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace

import torch

from services.training.engine import (EvalEvent, GrokfastFilter, GrokfastSpec, OptimizerSpec,
                                      Trainer, TrainingControl, TrainingEvent, TrainingSpec,
                                      build_components, build_optimizer, default_spec,
                                      warmup_factor)

PAPER_STEPS_GROKFAST = 910
PAPER_STEPS_BASELINE = 39_890


def paper_spec(max_steps: int) -> TrainingSpec:
    base = default_spec("modular_arithmetic")
    return base.replace(
        task=replace(base.task, data_order="paper"),
        model=replace(base.model, block_style="grokfast_paper", context_length=5),
        optimizer=OptimizerSpec(kind="adam", lr=1e-3, beta1=0.9, beta2=0.98, weight_decay=0.005,
                                warmup_steps=10),
        grokfast=GrokfastSpec(kind="ema", alpha=0.98, lamb=2.0),
        batch_size=512, max_steps=max_steps, eval_interval=10, progress_interval=10,
        checkpoint_interval=max(max_steps, 1), keep_checkpoints=1, seed=0, device="cpu")


def run_until(spec: TrainingSpec, target: float | None) -> tuple[int | None, list[tuple[int, float]], float]:
    """Run the Trainer; stop at the first eval >= target. Returns (step hit, curve, seconds)."""
    control = TrainingControl()
    curve: list[tuple[int, float]] = []
    hit: list[int] = []

    def on_event(ev: TrainingEvent) -> None:
        if isinstance(ev, EvalEvent):
            curve.append((ev.step, ev.validation_accuracy))
            if target is not None and not hit and ev.validation_accuracy >= target:
                hit.append(ev.step)
                control.cancel()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        Trainer(spec, d, control, on_event).run()
    return (hit[0] if hit else None), curve, time.perf_counter() - t0


def bare_loop(spec: TrainingSpec, steps: int) -> float:
    """The paper's loop written directly; returns seconds for ``steps`` steps incl. setup."""
    t0 = time.perf_counter()
    parts = build_components(spec)  # seed, model init, then split + batch order (paper's RNG order)
    task, model, sampler = parts.task, parts.model, parts.sampler
    opt = build_optimizer(spec.optimizer, model)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: warmup_factor(k, spec.optimizer.warmup_steps))
    gf = GrokfastFilter(spec.grokfast)
    for step in range(steps):
        x, y = task.train_batch(sampler.indices(step))
        logits = model(x)
        loss = task.loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gf.apply(model, compute_stats=False)
        opt.step()
        sched.step()
        loss.item()
        task.correct(logits.detach(), y)[0].item()
        if (step + 1) % spec.eval_interval == 0:
            task.evaluate(model)
    return time.perf_counter() - t0


def trainer_seconds(spec: TrainingSpec, steps: int) -> float:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        Trainer(replace(spec, max_steps=steps, checkpoint_interval=steps), d).run()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-steps", type=int, default=3000, help="cap for the Grokfast run")
    ap.add_argument("--baseline-steps", type=int, default=0,
                    help="baseline length (default: the Grokfast run's steps to 95%%)")
    ap.add_argument("--overhead-steps", type=int, default=200)
    ap.add_argument("--overhead-repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    spec = paper_spec(args.max_steps)
    gf_step, gf_curve, gf_secs = run_until(spec, 0.95)
    gf_steps_run = gf_curve[-1][0] if gf_curve else 0
    print(f"grokfast-ema: 95% val acc at step {gf_step} ({gf_secs:.1f}s, {gf_steps_run} steps run)",
          flush=True)

    base_steps = args.baseline_steps or gf_step or args.max_steps
    base_spec = paper_spec(base_steps).replace(
        optimizer=replace(spec.optimizer, weight_decay=0.0), grokfast=GrokfastSpec(kind="none"))
    _, base_curve, base_secs = run_until(base_spec, None)
    base_acc = base_curve[-1][1] if base_curve else float("nan")
    base_hit = next((s for s, a in base_curve if a >= 0.95), None)
    print(f"baseline: val acc {base_acc:.4f} at step {base_steps} ({base_secs:.1f}s); "
          f"95% reached at {base_hit}", flush=True)

    bare, trainer = [], []
    for _ in range(args.overhead_repeats):
        bare.append(bare_loop(spec, args.overhead_steps) / args.overhead_steps)
        trainer.append(trainer_seconds(spec, args.overhead_steps) / args.overhead_steps)
    bare_s, trainer_s = min(bare), min(trainer)

    rows = [
        ("steps to 95% val acc, Grokfast-EMA", str(gf_step), str(PAPER_STEPS_GROKFAST),
         f"{gf_step / PAPER_STEPS_GROKFAST:.2f}x" if gf_step else "n/a"),
        (f"baseline val acc at step {base_steps}", f"{base_acc:.4f}", "< 0.95 (95% at 39,890)", ""),
        ("baseline steps to 95% (this run)", str(base_hit) if base_hit else f"> {base_steps}",
         str(PAPER_STEPS_BASELINE), ""),
        ("s/step bare loop", f"{bare_s * 1e3:.2f} ms", "", ""),
        ("s/step Trainer", f"{trainer_s * 1e3:.2f} ms", "", f"{trainer_s / bare_s:.3f}x (goal <= 1.05x)"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("metric", "measured", "paper", "ratio")
    w = [max(w[i], len(head[i])) for i in range(4)]
    print()
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("-+-".join("-" * x for x in w))
    for r in rows:
        print(" | ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    result = {"grokfast_steps_to_95": gf_step, "grokfast_seconds": gf_secs,
              "grokfast_curve": gf_curve, "baseline_steps": base_steps,
              "baseline_val_acc": base_acc, "baseline_steps_to_95": base_hit,
              "bare_s_per_step": bare, "trainer_s_per_step": trainer,
              "overhead_ratio": trainer_s / bare_s}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
