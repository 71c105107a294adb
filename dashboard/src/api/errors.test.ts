import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "@gen/google/rpc/error_details_pb";
import { describeError, unplacedViolations, violationsAt } from "./errors";

describe("describeError", () => {
  it("collects field violations, the reason and a hint", () => {
    const err = new ConnectError("invalid request", Code.InvalidArgument, undefined, [
      {
        desc: BadRequestSchema,
        value: create(BadRequestSchema, {
          fieldViolations: [
            { field: "training_job.spec.batch_size", description: "value must be greater than or equal to 1" },
            { field: "training_job.spec.model", description: "width must be divisible by heads" },
          ],
        }),
      },
      { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason: "INVALID_FIELD", domain: "agentforge.dev" }) },
    ]);
    const p = describeError(err);
    expect(p.codeName).toBe("INVALID_ARGUMENT");
    expect(p.reason).toBe("INVALID_FIELD");
    expect(violationsAt(p, "training_job.spec.batch_size")).toEqual(["value must be greater than or equal to 1"]);
    expect(unplacedViolations(p, ["training_job.spec.batch_size"])).toEqual([
      ["training_job.spec.model", "width must be divisible by heads"],
    ]);
    expect(p.hint).toMatch(/Correct the fields/);
    expect(p.retryable).toBe(false);
  });

  it("marks UNAVAILABLE retryable and wraps non-Connect errors", () => {
    expect(describeError(new ConnectError("down", Code.Unavailable)).retryable).toBe(true);
    expect(describeError(new TypeError("Failed to fetch")).codeName).toBe("UNKNOWN");
  });
});
