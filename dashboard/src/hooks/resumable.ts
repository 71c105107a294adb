/**
 * A server stream that survives a dropped connection: it reopens with the cursor of the
 * last message it delivered, drops a message whose sequence it already delivered, and
 * backs off between attempts (exponential with full jitter, 0.25 s … 5 s).
 *
 * The server side of the contract (WatchTrainingJob, WatchPhaseRun, WatchAlerts):
 * per-stream sequence numbers 1, 2, 3 … and an opaque `cursor` on each message; a
 * request with that cursor yields exactly the messages after it. Streams without
 * cursors (WatchSystemHealth: snapshots) just reopen.
 *
 * The last message of a stream may carry `stream_end` (a google.rpc.Status): OK ends
 * the stream for good; an error status is handled like the call's error.
 *
 * A quiet watch gets a keepalive (`heartbeat`, an agentforge.common.v1.StreamHeartbeat)
 * every 15 s of silence: it shows the stream is live but is not delivered (no
 * sequence, no cursor; see `keepalive`).
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { describeError, type Problem } from "../api/errors";

export type StreamState = "connecting" | "live" | "reconnecting" | "ended" | "failed";

export interface StreamStatus {
  state: StreamState;
  /** Reconnections after a drop (not counting the first open). */
  reconnects: number;
  /** Messages dropped because their sequence had already been delivered. */
  duplicatesDropped: number;
  /** Sequence jumps seen (a message whose sequence is not last + 1). Should stay 0. */
  gaps: number;
  problem: Problem | null;
}

export interface Position {
  sequence: bigint;
  cursor: string;
}

export interface ResumableOptions<M> {
  /** Open the stream after `cursor` ("" = from the start). */
  open: (cursor: string, signal: AbortSignal) => AsyncIterable<M>;
  /** The message's sequence and cursor, or null for streams without them. */
  position?: (m: M) => Position | null;
  /** True for a keepalive (`heartbeat`): it marks the stream live and is not delivered. */
  keepalive?: (m: M) => boolean;
  /** The stream's end marker: `{code, message}` of `stream_end`, or null. */
  end?: (m: M) => { code: number; message: string } | null;
  onMessages: (batch: M[]) => void;
  onStatus?: (status: StreamStatus) => void;
  /** Resume after this point (e.g. the cursor returned with a metric history). */
  after?: Position;
  /** Backoff bounds in ms. */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** Codes after which the stream does not reopen. */
  fatal?: ReadonlySet<Code>;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

const DEFAULT_FATAL = new Set<Code>([
  Code.InvalidArgument,
  Code.NotFound,
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.FailedPrecondition,
  Code.Unimplemented,
  Code.OutOfRange,
]);

function defaultSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

export class ResumableStream<M> {
  private controller = new AbortController();
  private last: Position | null;
  private status: StreamStatus = { state: "connecting", reconnects: 0, duplicatesDropped: 0, gaps: 0, problem: null };
  private running: Promise<void> | null = null;

  constructor(private readonly opts: ResumableOptions<M>) {
    this.last = opts.after ?? null;
  }

  /** Starts the loop; resolves when the stream ended, failed or was stopped. */
  start(): Promise<void> {
    this.running ??= this.loop();
    return this.running;
  }

  stop(): void {
    this.controller.abort();
  }

  get position(): Position | null {
    return this.last;
  }

  private setStatus(patch: Partial<StreamStatus>): void {
    this.status = { ...this.status, ...patch };
    this.opts.onStatus?.(this.status);
  }

  private async loop(): Promise<void> {
    const signal = this.controller.signal;
    const fatal = this.opts.fatal ?? DEFAULT_FATAL;
    const sleep = this.opts.sleep ?? defaultSleep;
    const minDelay = this.opts.minDelayMs ?? 250;
    const maxDelay = this.opts.maxDelayMs ?? 5000;
    let failures = 0;
    this.setStatus({ state: "connecting" });
    while (!signal.aborted) {
      let delivered = false;
      try {
        for await (const m of this.opts.open(this.last?.cursor ?? "", signal)) {
          if (signal.aborted) return;
          const end = this.opts.end?.(m) ?? null;
          if (end) {
            if (end.code === 0) {
              this.setStatus({ state: "ended", problem: null });
              return;
            }
            throw new ConnectError(end.message, end.code);
          }
          if (this.opts.keepalive?.(m)) {
            if (!delivered || this.status.state !== "live") {
              delivered = true;
              failures = 0;
              this.setStatus({ state: "live", problem: null });
            }
            continue;
          }
          const pos = this.opts.position?.(m) ?? null;
          if (pos) {
            if (this.last && pos.sequence <= this.last.sequence) {
              this.setStatus({ duplicatesDropped: this.status.duplicatesDropped + 1 });
              continue;
            }
            if (this.last && pos.sequence !== this.last.sequence + 1n) {
              this.setStatus({ gaps: this.status.gaps + 1 });
            }
            this.last = pos;
          }
          if (!delivered || this.status.state !== "live") {
            delivered = true;
            failures = 0;
            this.setStatus({ state: "live", problem: null });
          }
          this.opts.onMessages([m]);
        }
        // Closed without an end marker (a proxy cut it cleanly): reopen after the cursor.
        if (signal.aborted) return;
        if (!this.opts.end) {
          this.setStatus({ state: "ended" });
          return;
        }
        throw new ConnectError("stream closed without its end", Code.Unavailable);
      } catch (err) {
        if (signal.aborted) return;
        const problem = describeError(err);
        if (fatal.has(problem.code)) {
          this.setStatus({ state: "failed", problem });
          return;
        }
        failures += 1;
        this.setStatus({ state: "reconnecting", reconnects: this.status.reconnects + 1, problem });
        const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(failures - 1, 10));
        await sleep(problem.retryAfterMs ?? Math.max(minDelay / 2, Math.random() * cap), signal);
      }
    }
  }
}
