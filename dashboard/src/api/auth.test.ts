import { beforeEach, describe, expect, it } from "vitest";
import { describeToken, takeTokenFromLocation, tokenStore } from "./auth";

const b64 = (o: object) => btoa(JSON.stringify(o)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const jwt = (claims: object) => `${b64({ alg: "ES256" })}.${b64(claims)}.sig`;

describe("tokens", () => {
  beforeEach(() => tokenStore.clear());

  it("reads exp, sub and role from a JWT", () => {
    const info = describeToken(jwt({ exp: 2000, sub: "alice", role: "viewer" }));
    expect(info).toMatchObject({ expiresAt: 2_000_000, subject: "alice", role: "viewer" });
    expect(describeToken("opaque")).toMatchObject({ expiresAt: null, subject: null });
  });

  it("takes #token=… once and removes it from the address", () => {
    const calls: string[] = [];
    const history = { replaceState: (_s: unknown, _t: string, url?: string | URL | null) => calls.push(String(url)) };
    const token = jwt({ sub: "ci" });
    expect(takeTokenFromLocation({ hash: `#token=${token}`, pathname: "/", search: "" }, history)).toBe(token);
    expect(calls).toEqual(["/#/"]);
    expect(tokenStore.current()).toBe(token);
    expect(takeTokenFromLocation({ hash: "#/jobs", pathname: "/", search: "" }, history)).toBeNull();
    takeTokenFromLocation({ hash: `#/jobs/abc?token=${token}&x=1`, pathname: "/", search: "" }, history);
    expect(calls[1]).toBe("/#/jobs/abc?x=1");
  });

  it("an expired token is not sent and asks for a new one", () => {
    tokenStore.set(jwt({ exp: 10 }));
    expect(tokenStore.current(11_000)).toBeNull();
    expect(tokenStore.snapshot.problem).toBe("expired");
    tokenStore.set(`Bearer ${jwt({ exp: 4_000_000_000 })}`);
    expect(tokenStore.current()).not.toBeNull();
    expect(tokenStore.current()!.startsWith("Bearer")).toBe(false);
  });
});
