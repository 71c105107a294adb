/** React glue: the clients, the token, the route, unary calls and resumable streams. */
import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import { tokenStore } from "../api/auth";
import { describeError, type Problem } from "../api/errors";
import { ResumableStream, type ResumableOptions, type StreamStatus } from "./resumable";

/** The grpc-web transport to the edge (api/client.ts), provided once at the root. */
export const TransportContext = createContext<Transport | null>(null);

/** A typed client of `service` on the root's transport (one per component instance). */
export function useClient<T extends DescService>(service: T): Client<T> {
  const transport = useContext(TransportContext);
  if (!transport) throw new Error("useClient outside <TransportContext.Provider>");
  return useMemo(() => createClient(service, transport), [service, transport]);
}

export function useAuth() {
  return useSyncExternalStore(
    (cb) => tokenStore.subscribe(cb),
    () => tokenStore.snapshot,
  );
}

/** The route: the fragment after `#`, e.g. `/jobs/abc` (default `/system`). */
export function useHashRoute(): string {
  const read = () => {
    const raw = window.location.hash.replace(/^#/, "").split("?")[0];
    return raw && raw !== "/" ? raw : "/system";
  };
  const [route, setRoute] = useState(read);
  useEffect(() => {
    const on = () => setRoute(read());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

export interface UnaryState<T> {
  data: T | null;
  problem: Problem | null;
  loading: boolean;
  reload: () => void;
}

/** Runs `call` when `deps` change (and on reload); aborts the previous call. */
export function useUnary<T>(call: (signal: AbortSignal) => Promise<T>, deps: unknown[]): UnaryState<T> {
  const [state, setState] = useState<{ data: T | null; problem: Problem | null; loading: boolean }>({
    data: null,
    problem: null,
    loading: true,
  });
  const [nonce, setNonce] = useState(0);
  const reload = useCallback(() => setNonce((n) => n + 1), []);
  useEffect(() => {
    const ctrl = new AbortController();
    setState((s) => ({ ...s, loading: true }));
    call(ctrl.signal).then(
      (data) => !ctrl.signal.aborted && setState({ data, problem: null, loading: false }),
      (err) => !ctrl.signal.aborted && setState((s) => ({ data: s.data, problem: describeError(err), loading: false })),
    );
    return () => ctrl.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, nonce]);
  return { ...state, reload };
}

/** A resumable server stream for the component's lifetime (restarted when `deps` change). */
export function useResumableStream<M>(make: () => ResumableOptions<M> | null, deps: unknown[]): StreamStatus {
  const [status, setStatus] = useState<StreamStatus>({
    state: "connecting",
    reconnects: 0,
    duplicatesDropped: 0,
    gaps: 0,
    problem: null,
  });
  const makeRef = useRef(make);
  makeRef.current = make;
  useEffect(() => {
    const opts = makeRef.current();
    if (!opts) return;
    const stream = new ResumableStream<M>({ ...opts, onStatus: setStatus });
    void stream.start();
    return () => stream.stop();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  return status;
}

/** Calls `fn` at most once per animation frame while `active` (for live charts). */
export function useFrame(fn: () => void): () => void {
  const pending = useRef(false);
  const fnRef = useRef(fn);
  fnRef.current = fn;
  return useCallback(() => {
    if (pending.current) return;
    pending.current = true;
    requestAnimationFrame(() => {
      pending.current = false;
      fnRef.current();
    });
  }, []);
}
