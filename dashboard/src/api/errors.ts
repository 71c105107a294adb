/**
 * Server errors as a person can act on them: the code in words, the message, the
 * offending fields (google.rpc.BadRequest field violations, keyed by the request's field
 * path, e.g. `training_job.spec.batch_size`), the reason (google.rpc.ErrorInfo,
 * PreconditionFailure) and what to do next. Details come from `grpc-status-details-bin`
 * (google/rpc/error_details.proto, AIP-193).
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "@gen/google/rpc/error_details_pb";

export interface Problem {
  code: Code;
  /** The gRPC code's canonical name, e.g. `INVALID_ARGUMENT`. */
  codeName: string;
  message: string;
  /** Field path → what is wrong with it. `""` is the request as a whole. */
  fields: Record<string, string[]>;
  reason: string | null;
  /** What the user can do about it. */
  hint: string;
  /** Trying again later may work (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, …). */
  retryable: boolean;
  retryAfterMs: number | null;
}

const CODE_NAMES: Record<number, string> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

const HINTS: Partial<Record<Code, string>> = {
  [Code.InvalidArgument]: "Correct the fields marked below and submit again.",
  [Code.OutOfRange]: "Correct the value and submit again.",
  [Code.NotFound]: "It may have been deleted. Go back to the list and pick another.",
  [Code.AlreadyExists]: "Choose another id, or open the existing one.",
  [Code.FailedPrecondition]: "It is not in a state that allows this; wait for it to change, then try again.",
  [Code.Aborted]: "Someone changed it at the same time. Reload and try again.",
  [Code.Unauthenticated]: "Sign in: paste a token (make token ROLE=…).",
  [Code.PermissionDenied]: "Your token's role may not do this. Sign in with a token of a role that may.",
  [Code.ResourceExhausted]: "Too many requests or a full queue. Wait a moment and try again.",
  [Code.Unavailable]: "A service is down or restarting. The dashboard retries; check the System page.",
  [Code.DeadlineExceeded]: "It took too long. Try again; check the System page if it keeps happening.",
  [Code.Unimplemented]: "The server does not offer this call; the dashboard may be newer than the mesh.",
  [Code.Internal]: "The server failed. Check the service's log; try again later.",
  [Code.Unknown]: "Unexpected error. Check the connection and the System page.",
  [Code.Canceled]: "The call was cancelled.",
};

/** Hints for reasons whose advice differs from their code's (ErrorInfo.reason). */
const REASON_HINTS: Record<string, string> = {
  NOT_RESOURCE_OWNER: "Only its creator or an operator may do this. Ask them, or sign in as an operator.",
  TOKEN_REVOKED: "This token was revoked. Get a new one (make token ROLE=…) and paste it.",
  TOKEN_EXPIRED: "Your token expired. Get a new one (make token ROLE=…) and paste it.",
};

const RETRYABLE = new Set<Code>([Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted, Code.Aborted]);

export function codeName(code: Code): string {
  return CODE_NAMES[code] ?? `CODE_${code}`;
}

/** Any thrown value (ConnectError, network TypeError, …) as a {@link Problem}. */
export function describeError(err: unknown): Problem {
  const ce = ConnectError.from(err);
  const fields: Record<string, string[]> = {};
  for (const bad of ce.findDetails(BadRequestSchema)) {
    for (const v of bad.fieldViolations) {
      (fields[v.field] ??= []).push(v.description || v.reason || "invalid");
    }
  }
  let reason: string | null = null;
  for (const info of ce.findDetails(ErrorInfoSchema)) reason ??= info.reason || null;
  for (const pre of ce.findDetails(PreconditionFailureSchema)) {
    for (const v of pre.violations) reason ??= v.description || v.type || null;
  }
  for (const q of ce.findDetails(QuotaFailureSchema)) {
    for (const v of q.violations) reason ??= v.description || null;
  }
  let retryAfterMs: number | null = null;
  for (const r of ce.findDetails(RetryInfoSchema)) {
    if (r.retryDelay) retryAfterMs = Number(r.retryDelay.seconds) * 1000 + Math.round(r.retryDelay.nanos / 1e6);
  }
  return {
    code: ce.code,
    codeName: codeName(ce.code),
    message: ce.rawMessage || codeName(ce.code),
    fields,
    reason,
    hint: (reason && REASON_HINTS[reason]) || HINTS[ce.code] || "",
    retryable: RETRYABLE.has(ce.code),
    retryAfterMs,
  };
}

/**
 * The violations for one form field: those at `path` and, for a message-level rule,
 * those at a parent the form shows as this field (e.g. `training_job.spec.model` for
 * "width must be divisible by heads" shown at the width field).
 */
export function violationsAt(problem: Problem | null, ...paths: string[]): string[] {
  if (!problem) return [];
  return paths.flatMap((p) => problem.fields[p] ?? []);
}

/** Violations that no form field shows: to list above the form, so none is lost. */
export function unplacedViolations(problem: Problem | null, placed: Iterable<string>): [string, string][] {
  if (!problem) return [];
  const known = new Set(placed);
  return Object.entries(problem.fields)
    .filter(([path]) => !known.has(path))
    .flatMap(([path, msgs]) => msgs.map((m): [string, string] => [path, m]));
}
