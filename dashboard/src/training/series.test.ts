import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { EvalMetricsSchema, TrainingProgressSchema } from "@gen/agentforge/training/v1/training_job_pb";
import { TrainingJobEventSchema } from "@gen/agentforge/training/v1/training_job_event_pb";
import { JobSeries } from "./series";

const progress = (step: number, loss: number) =>
  create(TrainingProgressSchema, { step: BigInt(step), trainLoss: loss, grokfast: { slowGradientNorm: 0.5, amplificationRatio: 2 } });

describe("JobSeries", () => {
  it("appends progress and evals column-wise", () => {
    const s = new JobSeries();
    for (let i = 1; i <= 3; i++) s.addProgress(progress(i, 3 - i));
    s.addEval(create(EvalMetricsSchema, { step: 3n, loss: 1, accuracy: 0.5 }));
    expect(s.progress.step).toEqual([1, 2, 3]);
    expect(s.progress.trainLoss).toEqual([2, 1, 0]);
    expect(s.progress.slowGradientNorm).toEqual([0.5, 0.5, 0.5]);
    expect(s.evals).toEqual({ step: [3], loss: [1], accuracy: [0.5] });
    expect(s.isContiguous(1)).toBe(true);
  });

  it("a job that went back to a checkpoint replaces the repeated steps", () => {
    const s = new JobSeries();
    for (let i = 1; i <= 5; i++) s.addProgress(progress(i, 10));
    s.addProgress(progress(4, 1));
    s.addProgress(progress(5, 1));
    expect(s.progress.step).toEqual([1, 2, 3, 4, 5]);
    expect(s.progress.trainLoss).toEqual([10, 10, 10, 1, 1]);
    expect(s.rewound).toBe(2);
  });

  it("applies watch events and ignores other kinds", () => {
    const s = new JobSeries();
    expect(s.apply(create(TrainingJobEventSchema, { kind: { case: "progress", value: progress(1, 2) } }))).toBe(true);
    expect(s.apply(create(TrainingJobEventSchema, { kind: { case: "log", value: { message: "hi" } } }))).toBe(false);
    expect(s.progress.step).toEqual([1]);
    s.addProgress(progress(3, 1));
    expect(s.isContiguous(1)).toBe(false);
  });
});
