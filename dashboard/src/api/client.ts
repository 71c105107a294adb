/**
 * One grpc-web transport (binary) to the edge at this page's own origin, and a typed
 * client per service. No REST side door: every call of the dashboard goes through here.
 *
 * The auth interceptor adds `authorization: Bearer <token>` to every call when a token is
 * set and turns UNAUTHENTICATED / PERMISSION_DENIED answers into a request for a token
 * (tokenStore.report), whether they come as the call's status or mid-stream.
 */
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ForgeService } from "@gen/agentforge/forge/v1/forge_service_pb";
import { ModelService } from "@gen/agentforge/model/v1/model_service_pb";
import { MonitoringService } from "@gen/agentforge/monitoring/v1/monitoring_service_pb";
import { TrainingService } from "@gen/agentforge/training/v1/training_service_pb";
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

export interface Clients {
  training: Client<typeof TrainingService>;
  monitoring: Client<typeof MonitoringService>;
  model: Client<typeof ModelService>;
  forge: Client<typeof ForgeService>;
}

export function makeClients(transport: Transport): Clients {
  return {
    training: createClient(TrainingService, transport),
    monitoring: createClient(MonitoringService, transport),
    model: createClient(ModelService, transport),
    forge: createClient(ForgeService, transport),
  };
}
