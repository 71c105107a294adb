"""Trainer: fidelity to a bare loop, exact resume, controls, checkpoints."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine_specs import tiny_modular_spec
from services.training.engine import (CheckpointEvent, ControlAppliedEvent, EvalEvent,
                                      GrokfastSpec, ModelSpec, ProgressEvent, Trainer,
                                      TrainingControl, TrainingEvent, TrainingSpec, build_model,
                                      epoch_seed,
                                      list_checkpoints, load_checkpoint)
from services.training.engine.checkpoint import save_checkpoint
from services.training.engine.tasks import ModularArithmeticTask


class Recorder:
    def __init__(self) -> None:
        self.events: list[TrainingEvent] = []

    def __call__(self, event: TrainingEvent) -> None:
        self.events.append(event)

    def of(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def losses(self) -> dict[int, float]:
        return {e.step: e.train_loss for e in self.of(ProgressEvent)}


def _gradfilter_ema(m, grads=None, alpha=0.98, lamb=2.0):  # the paper's code, verbatim
    if grads is None:
        grads = {n: p.grad.data.detach() for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}
    for n, p in m.named_parameters():
        if p.requires_grad and p.grad is not None:
            grads[n] = grads[n] * alpha + p.grad.data.detach() * (1 - alpha)
            p.grad.data = p.grad.data + grads[n] * lamb
    return grads


def _bare_paper_loop(spec: TrainingSpec) -> list[float]:
    """The reference loop (data_order="paper"): one global RNG stream for init, split, shuffles."""
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, spec.task.modulus + 2, spec.task.kind)
    p = spec.task.modulus
    x, y = torch.cartesian_prod(torch.arange(p), torch.arange(1, p)).T
    inputs = torch.stack([x, torch.full_like(x, p + 1), y, torch.full_like(x, p)], dim=1)
    targets = x * y % p
    train_idx, _ = torch.randperm(len(inputs)).split(len(inputs) // 2)
    train_x, train_y = inputs[train_idx], targets[train_idx]
    o = spec.optimizer
    opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1 if u > o.warmup_steps else u / o.warmup_steps)
    grads, losses = None, []
    while len(losses) < spec.max_steps:
        shuffle = torch.randperm(len(train_x))
        train_x, train_y = train_x[shuffle], train_y[shuffle]
        for x, y in zip(train_x.split(spec.batch_size), train_y.split(spec.batch_size)):
            if len(losses) == spec.max_steps:
                break
            loss = F.cross_entropy(model(x)[:, -1], y)
            model.zero_grad()
            loss.backward()
            grads = _gradfilter_ema(model, grads, alpha=spec.grokfast.alpha, lamb=spec.grokfast.lamb)
            opt.step()
            sched.step()
            losses.append(loss.item())
    return losses


def _bare_seeded_loop(spec: TrainingSpec) -> list[float]:
    """data_order="seeded": split and per-epoch shuffles from generators seeded by the seed."""
    task = ModularArithmeticTask(spec.task.modulus, spec.task.train_fraction, spec.seed)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, task.vocab_size, spec.task.kind)
    o = spec.optimizer
    opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1 if u > o.warmup_steps else u / o.warmup_steps)
    n, bs = task.train_inputs.shape[0], spec.batch_size
    per_epoch = -(-n // bs)
    grads, losses = None, []
    for step in range(spec.max_steps):
        epoch, b = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(spec.seed, epoch)))
        idx = perm[b * bs:(b + 1) * bs]
        loss = F.cross_entropy(model(task.train_inputs[idx])[:, -1], task.train_targets[idx])
        model.zero_grad()
        loss.backward()
        grads = _gradfilter_ema(model, grads, alpha=spec.grokfast.alpha, lamb=spec.grokfast.lamb)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(("block_style", "data_order"),
                         [("auto", "auto"), ("grokfast_paper", "paper"), ("pre_ln", "seeded")])
def test_trainer_loss_per_step_equals_a_bare_pytorch_loop(tmp_path: Path, block_style: str,
                                                          data_order: str) -> None:
    base = tiny_modular_spec(max_steps=12)
    spec = base.replace(task=replace(base.task, data_order=data_order),
                        model=replace(base.model, block_style=block_style))
    rec = Recorder()
    Trainer(spec, tmp_path, on_event=rec).run()

    bare = (_bare_paper_loop(spec) if spec.task.resolved_data_order() == "paper"
            else _bare_seeded_loop(spec))
    ours = rec.losses()
    assert sorted(ours) == list(range(1, spec.max_steps + 1))
    assert bare[0] > bare[-1]  # it learns
    for step, value in enumerate(bare, 1):
        assert ours[step] == pytest.approx(value, rel=1e-6, abs=1e-7), step


def _weights(path: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize(("grokfast", "block_style", "data_order"), [
    (GrokfastSpec(kind="ema"), "grokfast_paper", "paper"),
    (GrokfastSpec(kind="ma", window=4), "grokfast_paper", "paper"),
    (GrokfastSpec(kind="ema"), "pre_ln", "seeded"),
])
def test_paused_and_resumed_run_ends_identical_to_a_straight_run(
        tmp_path: Path, grokfast: GrokfastSpec, block_style: str, data_order: str) -> None:
    base = tiny_modular_spec(max_steps=16, grokfast=grokfast,
                             model=ModelSpec(layers=1, width=32, heads=2, context_length=4, dropout=0.1,
                                             block_style=block_style))  # type: ignore[arg-type]
    spec = base.replace(task=replace(base.task, data_order=data_order))
    straight = Recorder()
    full = Trainer(spec, tmp_path / "straight", on_event=straight).run()

    control, first = TrainingControl(), Recorder()

    def pause_at_8(ev: TrainingEvent) -> None:
        first(ev)
        if isinstance(ev, ProgressEvent) and ev.step == 8:
            control.pause()

    paused = Trainer(spec, tmp_path / "resumed", control, pause_at_8).run()
    assert paused.status == "paused" and paused.step == 8
    second = Recorder()
    resumed = Trainer(spec, tmp_path / "resumed", on_event=second).run()
    assert resumed.status == "succeeded" and resumed.resumed_from_step == 8

    losses = {**first.losses(), **second.losses()}
    assert losses == straight.losses()  # bit-identical, every step
    a, b = _weights(full.checkpoint_path), _weights(resumed.checkpoint_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_crash_after_any_checkpoint_resumes_to_the_same_weights(tmp_path: Path) -> None:
    spec = tiny_modular_spec(max_steps=15, checkpoint_interval=5,
                             model=ModelSpec(layers=1, width=32, heads=2, context_length=4, dropout=0.1))
    full = Trainer(spec, tmp_path / "straight").run()
    final = _weights(full.checkpoint_path)
    for ckpt in list_checkpoints(tmp_path / "straight")[:-1]:  # steps 5 and 10
        crashed = tmp_path / f"crash-{ckpt.step}" / "checkpoints"
        crashed.mkdir(parents=True)
        shutil.copy(ckpt.path, crashed)  # the state a SIGKILLed worker left behind
        out = Trainer(spec, crashed.parent).run()
        assert out.resumed_from_step == ckpt.step
        got = _weights(out.checkpoint_path)
        assert all(torch.equal(final[k], got[k]) for k in final)


def test_cancel_stops_within_one_step(tmp_path: Path) -> None:
    control, rec = TrainingControl(), Recorder()

    def cancel_at_3(ev: TrainingEvent) -> None:
        rec(ev)
        if isinstance(ev, ProgressEvent) and ev.step == 3:
            control.cancel()

    out = Trainer(tiny_modular_spec(max_steps=1000), tmp_path, control, cancel_at_3).run()
    assert out.status == "cancelled" and out.step == 3 and out.checkpoint_path is None
    assert max(e.step for e in rec.of(ProgressEvent)) == 3
    assert [e.action for e in rec.of(ControlAppliedEvent)] == ["cancel"]


def test_pause_writes_a_checkpoint_and_stops(tmp_path: Path) -> None:
    control = TrainingControl()
    control.pause()  # before the first step
    rec = Recorder()
    out = Trainer(tiny_modular_spec(), tmp_path, control, rec).run()
    assert out.status == "paused" and out.step == 0
    assert [c.step for c in list_checkpoints(tmp_path)] == [0]
    assert out.checkpoint_path == list_checkpoints(tmp_path)[0].path
    assert rec.of(CheckpointEvent)[0].reason == "pause"


def test_live_lr_and_grokfast_changes_apply_at_the_next_step_and_are_events(tmp_path: Path) -> None:
    control, rec = TrainingControl(), Recorder()

    def change_at_4(ev: TrainingEvent) -> None:
        rec(ev)
        if isinstance(ev, ProgressEvent) and ev.step == 4:
            control.set_lr(5e-4)
            control.set_grokfast(alpha=0.5, lamb=0.0)

    spec = tiny_modular_spec(max_steps=6)
    Trainer(spec, tmp_path, control, change_at_4).run()
    progress = {e.step: e for e in rec.of(ProgressEvent)}
    assert progress[4].lr == pytest.approx(1e-3) and progress[4].amplification_ratio > 1.0
    assert progress[5].lr == pytest.approx(5e-4)
    assert (progress[5].grokfast_alpha, progress[5].grokfast_lamb) == (0.5, 0.0)
    assert progress[5].amplification_ratio == pytest.approx(1.0)  # lamb 0: gradient untouched
    applied = {e.action: e for e in rec.of(ControlAppliedEvent)}
    assert applied["set_lr"].step == 4 and applied["set_lr"].values == {"lr": 5e-4}
    assert applied["set_lr"].previous == {"lr": 1e-3}
    assert applied["set_grokfast"].values == {"alpha": 0.5, "lamb": 0.0}
    # the change is checkpointed: the final checkpoint carries the new settings
    ckpt = load_checkpoint(list_checkpoints(tmp_path)[-1].path)
    assert ckpt["base_lr"] == 5e-4 and ckpt["grokfast"]["alpha"] == 0.5


def test_checkpoint_now_and_retention_keeps_the_last_k(tmp_path: Path) -> None:
    control, rec = TrainingControl(), Recorder()

    def on_event(ev: TrainingEvent) -> None:
        rec(ev)
        if isinstance(ev, ProgressEvent) and ev.step == 3:
            control.checkpoint_now()

    spec = tiny_modular_spec(max_steps=12, checkpoint_interval=4, keep_checkpoints=2)
    out = Trainer(spec, tmp_path, control, on_event).run()
    written = [(e.step, e.reason) for e in rec.of(CheckpointEvent)]
    assert written == [(3, "requested"), (4, "interval"), (8, "interval"), (12, "final")]
    assert [c.step for c in list_checkpoints(tmp_path)] == [8, 12]
    assert out.checkpoint_path == list_checkpoints(tmp_path)[-1].path
    assert not [f for f in os.listdir(tmp_path / "checkpoints") if not f.startswith("ckpt-")]


def test_failed_checkpoint_write_leaves_no_partial_file(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path, 1, {"w": torch.ones(3)})
    with pytest.raises(Exception):
        # half the payload is serialised before pickling the lambda fails
        save_checkpoint(tmp_path, 2, {"w": torch.ones(100_000), "bad": lambda: None})
    assert os.listdir(tmp_path / "checkpoints") == [os.path.basename(good.path)]
    assert [c.step for c in list_checkpoints(tmp_path)] == [1]


def test_eval_and_progress_carry_grokking_signals(tmp_path: Path) -> None:
    rec = Recorder()
    out = Trainer(tiny_modular_spec(max_steps=10, progress_interval=5), tmp_path, on_event=rec).run()
    evals = rec.of(EvalEvent)
    assert [e.step for e in evals] == [5, 10]
    assert evals[0].validation_examples == 23 * 22 - 253  # the full validation split
    last = rec.of(ProgressEvent)[-1]
    assert last.step == 10 and last.fraction == 1.0 and last.eta_seconds == 0.0
    assert last.slow_grad_norm > 0 and last.amplification_ratio > 1.0
    assert last.train_val_gap == pytest.approx(evals[-1].train_val_gap)
    assert out.metrics["eval_accuracy"] == evals[-1].validation_accuracy


def test_rerunning_a_finished_job_returns_its_final_checkpoint(tmp_path: Path) -> None:
    spec = tiny_modular_spec(max_steps=5)
    first = Trainer(spec, tmp_path).run()
    rec = Recorder()
    again = Trainer(spec, tmp_path, on_event=rec).run()
    assert again.status == "succeeded" and again.step == 5 and again.resumed_from_step == 5
    assert again.checkpoint_path == first.checkpoint_path and not rec.of(ProgressEvent)


def test_grokfast_ma_progress_reports_its_window_not_an_alpha(tmp_path: Path) -> None:
    """Issue 8: an MA job's progress showed EMA's alpha; it reports the window (and how
    full it is) and no alpha, in the engine event and in the API's TrainingProgress."""
    from agentforge.training.v1 import training_job_pb2 as job_pb

    from services.training import mapping

    spec = tiny_modular_spec(grokfast=GrokfastSpec(kind="ma", lamb=2.0, window=5, warmup=True), max_steps=8)
    rec = Recorder()
    Trainer(spec, tmp_path, on_event=rec).run()
    progress = rec.of(ProgressEvent)
    assert [(e.grokfast_kind, e.grokfast_alpha, e.grokfast_window) for e in progress] == [("ma", None, 5)] * len(progress)
    assert [e.grokfast_window_filled for e in progress] == [min(e.step, 5) for e in progress]
    last = mapping.progress_proto(progress[-1]).grokfast
    assert (last.kind, last.window, last.window_filled, last.alpha) == (job_pb.GROKFAST_KIND_MA, 5, 5, 0.0)
    assert last.lamb == pytest.approx(2.0)
    # EMA still reports its alpha, and no window.
    rec = Recorder()
    Trainer(tiny_modular_spec(max_steps=2), tmp_path / "ema", on_event=rec).run()
    ema = mapping.progress_proto(rec.of(ProgressEvent)[-1]).grokfast
    assert (ema.kind, ema.window) == (job_pb.GROKFAST_KIND_EMA, 0) and ema.alpha == pytest.approx(0.98)
