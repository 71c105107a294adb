/**
 * The bearer token the dashboard sends with every call.
 *
 * A token arrives by paste (the sign-in form) or in the address's fragment,
 * `/#token=<jwt>` (as Jupyter hands one over), which {@link takeTokenFromLocation} reads
 * once and removes from the address bar and the history entry. It is kept in
 * sessionStorage: it survives a reload, not the tab. The edge (Envoy jwt_authn) is the
 * judge of a token; the dashboard only reads the JWT payload's `exp`, `sub` and `role`
 * (RFC 7519) to warn before expiry and to say who is signed in. A token that is not a
 * JWT is still sent as-is.
 */

const STORAGE_KEY = "agentforge.token";

export interface TokenInfo {
  token: string;
  /** Expiry, ms since the epoch; null when the token carries none (or is not a JWT). */
  expiresAt: number | null;
  subject: string | null;
  role: string | null;
}

export type AuthProblem = "expired" | "rejected" | "forbidden" | null;

interface AuthState {
  info: TokenInfo | null;
  /** Why the user is asked for a (new) token, or null. */
  problem: AuthProblem;
  detail: string;
}

type Listener = (state: AuthState) => void;

function base64UrlDecode(part: string): string {
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const bin = atob(padded);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The token's claims we show, from its JWT payload; nulls when it is not a JWT. */
export function describeToken(token: string): TokenInfo {
  const parts = token.split(".");
  if (parts.length === 3) {
    try {
      const payload = JSON.parse(base64UrlDecode(parts[1])) as Record<string, unknown>;
      return {
        token,
        expiresAt: typeof payload.exp === "number" ? payload.exp * 1000 : null,
        subject: typeof payload.sub === "string" ? payload.sub : null,
        role: typeof payload.role === "string" ? payload.role : null,
      };
    } catch {
      /* not a JWT we can read: send it anyway */
    }
  }
  return { token, expiresAt: null, subject: null, role: null };
}

function storage(): Storage | null {
  try {
    return typeof sessionStorage === "undefined" ? null : sessionStorage;
  } catch {
    return null;
  }
}

class TokenStore {
  private state: AuthState = { info: null, problem: null, detail: "" };
  private listeners = new Set<Listener>();

  constructor() {
    const saved = storage()?.getItem(STORAGE_KEY);
    if (saved) this.state = { info: describeToken(saved), problem: null, detail: "" };
  }

  get snapshot(): AuthState {
    return this.state;
  }

  /** The token to send now, or null (none, or expired: the edge would refuse it). */
  current(now = Date.now()): string | null {
    const info = this.state.info;
    if (!info) return null;
    if (info.expiresAt !== null && info.expiresAt <= now) {
      if (this.state.problem !== "expired") {
        this.update({ info, problem: "expired", detail: "Your token expired. Paste a new one." });
      }
      return null;
    }
    return info.token;
  }

  set(token: string): void {
    const trimmed = token.trim().replace(/^Bearer\s+/i, "");
    if (!trimmed) return this.clear();
    storage()?.setItem(STORAGE_KEY, trimmed);
    this.update({ info: describeToken(trimmed), problem: null, detail: "" });
  }

  clear(): void {
    storage()?.removeItem(STORAGE_KEY);
    this.update({ info: null, problem: null, detail: "" });
  }

  /** The edge answered 401/403: ask for another token (and say why). */
  report(problem: Exclude<AuthProblem, null>, detail: string): void {
    if (this.state.problem === problem && this.state.detail === detail) return;
    this.update({ ...this.state, problem, detail });
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private update(next: AuthState): void {
    this.state = next;
    for (const l of this.listeners) l(next);
  }
}

export const tokenStore = new TokenStore();

/**
 * Reads `token=<value>` from the fragment (`#token=…`, also `#/jobs?token=…` or
 * `#token=…&next=/jobs`), stores it and rewrites the address without it (replaceState:
 * no history entry keeps it). Returns the token, or null when there was none.
 */
export function takeTokenFromLocation(
  loc: Pick<Location, "hash" | "pathname" | "search"> = window.location,
  history: Pick<History, "replaceState"> = window.history,
  store: Pick<TokenStore, "set"> = tokenStore,
): string | null {
  const hash = loc.hash.replace(/^#/, "");
  if (!hash.includes("token=")) return null;
  const [route, query = ""] = hash.includes("?") ? hash.split("?", 2) : hash.startsWith("token=") ? ["", hash] : [hash, ""];
  const params = new URLSearchParams(query);
  const token = params.get("token");
  if (!token) return null;
  params.delete("token");
  const next = params.get("next");
  params.delete("next");
  const rest = params.toString();
  const target = next ?? (route || "/");
  history.replaceState(null, "", `${loc.pathname}${loc.search}#${target}${rest ? `?${rest}` : ""}`);
  store.set(token);
  return token;
}
