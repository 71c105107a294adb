/**
 * One grpc-web transport (binary) to the edge at this page's own origin; pages make their
 * typed clients on it with `useClient(Service)` (hooks.ts), importing only the service
 * descriptors they use, so each page's chunk carries its own contracts and the first page
 * loads none it does not need. No REST side door: every call of the dashboard goes through here.
 *
 * The auth interceptor adds `authorization: Bearer <token>` to every call when a token is
 * set and turns UNAUTHENTICATED / PERMISSION_DENIED answers into a request for a token
 * (tokenStore.report), whether they come as the call's status or mid-stream.
 */
import { Code, ConnectError, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { tokenStore } from "./auth";

/** Records what a 401/403 means for the token; returns the error unchanged. */
export function noteAuthError(err: unknown): unknown {
  if (err instanceof ConnectError) {
    if (err.code === Code.Unauthenticated) {
      tokenStore.report("rejected", err.rawMessage || "The edge refused the token (missing, invalid or expired).");
    } else if (err.code === Code.PermissionDenied) {
      tokenStore.report("forbidden", err.rawMessage || "Your token's role may not do this.");
    }
  }
  return err;
}

export const authInterceptor: Interceptor = (next) => async (req) => {
  const token = tokenStore.current();
  if (token) req.header.set("authorization", `Bearer ${token}`);
  try {
    const res = await next(req);
    if (!res.stream) return res;
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* messages;
        } catch (err) {
          throw noteAuthError(err);
        }
      })(),
    };
  } catch (err) {
    throw noteAuthError(err);
  }
};

export function makeTransport(baseUrl: string = window.location.origin): Transport {
  return createGrpcWebTransport({ baseUrl, useBinaryFormat: true, interceptors: [authInterceptor] });
}
