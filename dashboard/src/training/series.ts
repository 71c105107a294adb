/**
 * A training job's chart data, column-wise as uPlot takes it (x = step).
 *
 * Fed from the metric history (GetTrainingJobMetrics: downsampled, one call) and then from
 * WatchTrainingJob's progress and eval events. Steps only grow within a run; when a job
 * resumes from an older checkpoint (a requeued or taken-over job repeats steps after
 * it) the points from that step on are replaced: the chart shows the run as it is now.
 */
import type { EvalMetrics, TrainingProgress } from "@gen/agentforge/training/v1/training_job_pb";
import type { TrainingJobEvent } from "@gen/agentforge/training/v1/training_job_event_pb";

export interface ProgressColumns {
  step: number[];
  trainLoss: number[];
  trainAccuracy: number[];
  learningRate: number[];
  slowGradientNorm: number[];
  amplificationRatio: number[];
}

export interface EvalColumns {
  step: number[];
  loss: number[];
  accuracy: number[];
}

function truncateFrom(cols: Record<string, number[]>, steps: number[], step: number): number {
  // First index whose step >= `step` (steps ascending): binary search.
  let lo = 0;
  let hi = steps.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (steps[mid] < step) lo = mid + 1;
    else hi = mid;
  }
  const removed = steps.length - lo;
  if (removed > 0) for (const key of Object.keys(cols)) cols[key].length = lo;
  return removed;
}

export class JobSeries {
  readonly progress: ProgressColumns = {
    step: [],
    trainLoss: [],
    trainAccuracy: [],
    learningRate: [],
    slowGradientNorm: [],
    amplificationRatio: [],
  };
  readonly evals: EvalColumns = { step: [], loss: [], accuracy: [] };
  /** Points replaced because the job went back to an earlier step. */
  rewound = 0;
  /** Bumped on every change, for renderers that poll. */
  version = 0;

  addProgress(p: TrainingProgress): void {
    const step = Number(p.step);
    const cols = this.progress;
    if (cols.step.length && step <= cols.step[cols.step.length - 1]) {
      this.rewound += truncateFrom(cols as unknown as Record<string, number[]>, cols.step, step);
    }
    cols.step.push(step);
    cols.trainLoss.push(p.trainLoss);
    cols.trainAccuracy.push(p.trainAccuracy);
    cols.learningRate.push(p.learningRate);
    cols.slowGradientNorm.push(p.grokfast?.slowGradientNorm ?? NaN);
    cols.amplificationRatio.push(p.grokfast?.amplificationRatio ?? NaN);
    this.version++;
  }

  addEval(e: EvalMetrics): void {
    const step = Number(e.step);
    const cols = this.evals;
    if (cols.step.length && step <= cols.step[cols.step.length - 1]) {
      truncateFrom(cols as unknown as Record<string, number[]>, cols.step, step);
    }
    cols.step.push(step);
    cols.loss.push(e.loss);
    cols.accuracy.push(e.accuracy);
    this.version++;
  }

  /** Applies one WatchTrainingJob event; true when it changed the series. */
  apply(event: TrainingJobEvent): boolean {
    switch (event.kind.case) {
      case "progress":
        this.addProgress(event.kind.value);
        return true;
      case "evalCompleted":
        this.addEval(event.kind.value);
        return true;
      default:
        return false;
    }
  }

  /** Steps strictly increasing, each `interval` after the previous (no gap, no duplicate). */
  isContiguous(interval: number): boolean {
    const s = this.progress.step;
    for (let i = 1; i < s.length; i++) if (s[i] - s[i - 1] !== interval) return false;
    return true;
  }
}
