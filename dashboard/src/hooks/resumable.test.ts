import { describe, expect, it } from "vitest";
import { Code, ConnectError } from "@connectrpc/connect";
import { ResumableStream, type StreamStatus } from "./resumable";

interface Msg {
  seq: bigint;
  end?: { code: number; message: string };
}

const cursorOf = (seq: bigint) => `c${seq}`;
const seqOf = (cursor: string) => (cursor ? BigInt(cursor.slice(1)) : 0n);
const noSleep = async () => {};

/** A fake server: `total` messages; `script` says after how many messages each call drops. */
function server(total: number, drops: number[], opts: { replayFrom?: (after: bigint) => bigint } = {}) {
  const opened: string[] = [];
  let call = 0;
  const open = async function* (cursor: string) {
    opened.push(cursor);
    const drop = drops[call++];
    let after = seqOf(cursor);
    if (opts.replayFrom) after = opts.replayFrom(after); // a server that re-sends a few
    let sent = 0;
    for (let s = after + 1n; s <= BigInt(total); s++) {
      if (drop !== undefined && sent === drop) throw new ConnectError("connection reset", Code.Unavailable);
      sent++;
      yield { seq: s } as Msg;
    }
    yield { seq: 0n, end: { code: 0, message: "" } } as Msg;
  };
  return { open, opened };
}

function run(total: number, drops: number[], extra: Partial<ConstructorParameters<typeof ResumableStream<Msg>>[0]> = {},
  opts?: { replayFrom?: (after: bigint) => bigint }) {
  const srv = server(total, drops, opts);
  const got: bigint[] = [];
  const statuses: StreamStatus[] = [];
  const stream = new ResumableStream<Msg>({
    open: (cursor) => srv.open(cursor),
    position: (m) => (m.end ? null : { sequence: m.seq, cursor: cursorOf(m.seq) }),
    end: (m) => m.end ?? null,
    onMessages: (batch) => got.push(...batch.map((m) => m.seq)),
    onStatus: (s) => statuses.push(s),
    sleep: noSleep,
    ...extra,
  });
  return { stream, got, statuses, srv };
}

describe("ResumableStream", () => {
  it("skips keepalives: not delivered, no duplicate counted, the stream goes live on one", async () => {
    const got: bigint[] = [];
    const statuses: StreamStatus[] = [];
    const opened: string[] = [];
    let call = 0;
    const stream = new ResumableStream<Msg & { beat?: boolean }>({
      open: async function* (cursor) {
        opened.push(cursor);
        yield { seq: 0n, beat: true }; // a quiet stream's heartbeat before any event
        if (call++ === 0) {
          yield { seq: 1n };
          yield { seq: 0n, beat: true };
          throw new ConnectError("connection reset", Code.Unavailable);
        }
        yield { seq: 2n };
        yield { seq: 0n, beat: true };
        yield { seq: 0n, end: { code: 0, message: "" } };
      },
      position: (m) => (m.end || m.beat ? null : { sequence: m.seq, cursor: cursorOf(m.seq) }),
      keepalive: (m) => m.beat === true,
      end: (m) => m.end ?? null,
      onMessages: (batch) => got.push(...batch.map((m) => m.seq)),
      onStatus: (s) => statuses.push(s),
      sleep: noSleep,
    });
    await stream.start();
    expect(got).toEqual([1n, 2n]);
    expect(opened).toEqual(["", "c1"]); // a keepalive never moves the cursor
    expect(statuses[1].state).toBe("live"); // live on the first heartbeat, before any event
    const last = statuses[statuses.length - 1];
    expect(last.state).toBe("ended");
    expect(last.duplicatesDropped).toBe(0);
    expect(last.gaps).toBe(0);
  });

  it("reopens after drops from the last cursor: every message once, in order", async () => {
    const { stream, got, statuses, srv } = run(10, [3, 2, 4]);
    await stream.start();
    expect(got).toEqual(Array.from({ length: 10 }, (_, i) => BigInt(i + 1)));
    expect(srv.opened).toEqual(["", "c3", "c5", "c9"]);
    const last = statuses[statuses.length - 1];
    expect(last.state).toBe("ended");
    expect(last.reconnects).toBe(3);
    expect(last.gaps).toBe(0);
  });

  it("drops messages the server sends again", async () => {
    const { stream, got, statuses } = run(6, [2], {}, { replayFrom: (after) => (after > 1n ? after - 2n : after) });
    await stream.start();
    expect(got).toEqual([1n, 2n, 3n, 4n, 5n, 6n]);
    expect(statuses[statuses.length - 1].duplicatesDropped).toBe(2);
  });

  it("starts after a given position (the metric history's cursor)", async () => {
    const { stream, got, srv } = run(5, [], { after: { sequence: 3n, cursor: "c3" } });
    await stream.start();
    expect(srv.opened).toEqual(["c3"]);
    expect(got).toEqual([4n, 5n]);
  });

  it("stops on a fatal code and reports it", async () => {
    const statuses: StreamStatus[] = [];
    let opens = 0;
    const stream = new ResumableStream<Msg>({
      open: async function* () {
        opens++;
        throw new ConnectError("no such job", Code.NotFound);
      },
      onMessages: () => {},
      onStatus: (s) => statuses.push(s),
      sleep: noSleep,
    });
    await stream.start();
    expect(opens).toBe(1);
    expect(statuses[statuses.length - 1].state).toBe("failed");
    expect(statuses[statuses.length - 1].problem?.codeName).toBe("NOT_FOUND");
  });

  it("treats an error stream_end like the call's error", async () => {
    const statuses: StreamStatus[] = [];
    const stream = new ResumableStream<Msg>({
      open: async function* () {
        yield { seq: 0n, end: { code: Code.PermissionDenied, message: "viewer may not" } };
      },
      end: (m) => m.end ?? null,
      onMessages: () => {},
      onStatus: (s) => statuses.push(s),
      sleep: noSleep,
    });
    await stream.start();
    expect(statuses[statuses.length - 1].problem?.code).toBe(Code.PermissionDenied);
  });

  it("stop() ends a stream that is waiting", async () => {
    let release: () => void = () => {};
    const stream = new ResumableStream<Msg>({
      open: async function* () {
        await new Promise<void>((r) => (release = r));
        yield { seq: 1n };
      },
      onMessages: () => {},
    });
    const done = stream.start();
    stream.stop();
    release();
    await done;
    expect(stream.position).toBeNull();
  });
});
