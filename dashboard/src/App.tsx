/** The shell: navigation, the sign-in bar, and the page for the current route. */
import { lazy, Suspense, useState, type ReactNode } from "react";
import { tokenStore } from "./api/auth";
import { useAuth, useHashRoute } from "./hooks/hooks";
import { extraRoutes, extraNav } from "./pages/more";

// Every page is its own chunk, loaded when its route is first shown: the first page
// downloads the shell and that page's code and contracts only (docs/benchmarks.md).
const SystemPage = lazy(() => import("./pages/SystemPage").then((m) => ({ default: m.SystemPage })));
const JobsPage = lazy(() => import("./pages/JobsPage").then((m) => ({ default: m.JobsPage })));
const JobPage = lazy(() => import("./pages/JobPage").then((m) => ({ default: m.JobPage })));

const NAV: [string, string][] = [
  ["/system", "System"],
  ["/jobs", "Training jobs"],
  ...extraNav,
];

function page(route: string): ReactNode {
  if (route === "/system") return <SystemPage />;
  if (route === "/jobs") return <JobsPage />;
  const job = /^\/jobs\/([a-z0-9][a-z0-9-]{0,62})$/.exec(route);
  if (job) return <JobPage key={job[1]} id={job[1]} />;
  const extra = extraRoutes(route);
  if (extra) return extra;
  return (
    <section>
      <h1>Not found</h1>
      <p>No page at <code>{route}</code>. <a href="#/system">Go to System</a>.</p>
    </section>
  );
}

function SignIn() {
  const auth = useAuth();
  const [draft, setDraft] = useState("");
  const [open, setOpen] = useState(false);
  const info = auth.info;
  const expiresIn = info?.expiresAt ? Math.round((info.expiresAt - Date.now()) / 60000) : null;
  const needed = auth.problem !== null;
  return (
    <div className={`signin${needed ? " needed" : ""}`} role={needed ? "alert" : undefined}>
      {needed ? <strong>{auth.detail} </strong> : null}
      {info && !needed ? (
        <span>
          Signed in{info.subject ? ` as ${info.subject}` : ""}{info.role ? ` (${info.role})` : ""}
          {expiresIn !== null ? `, token expires in ${expiresIn} min` : ""}{" "}
          <button type="button" onClick={() => tokenStore.clear()}>Sign out</button>
        </span>
      ) : null}
      {!info && !needed ? <span className="muted">No token (the edge may not require one). </span> : null}
      {open || needed ? (
        <form
          className="inline-form"
          onSubmit={(e) => {
            e.preventDefault();
            tokenStore.set(draft);
            setDraft("");
            setOpen(false);
          }}
        >
          <label htmlFor="token-input">Token</label>
          <input id="token-input" type="password" autoComplete="off" value={draft} onChange={(e) => setDraft(e.target.value)}
            placeholder="paste the output of make token ROLE=…" size={40} />
          <button type="submit">Use token</button>
        </form>
      ) : (
        <button type="button" onClick={() => setOpen(true)}>{info ? "Change token" : "Paste a token"}</button>
      )}
    </div>
  );
}

export function App() {
  const route = useHashRoute();
  // A new token remounts the page, so calls and streams refused for the old one start again.
  const token = useAuth().info?.token ?? "";
  const first = route.split("/")[1] ?? "";
  const section = "/" + (first === "phaseRuns" ? "phases" : first);
  return (
    <>
      <a className="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById("main")?.focus(); }}>
        Skip to content
      </a>
      <header>
        <span className="brand">Agent Forge</span>
        <nav aria-label="Main">
          {NAV.map(([path, label]) => (
            <a key={path} href={`#${path}`} aria-current={section === path ? "page" : undefined}>{label}</a>
          ))}
        </nav>
        <SignIn />
      </header>
      <main id="main" tabIndex={-1} key={token}>
        <Suspense fallback={<p className="muted" aria-busy="true">Loading…</p>}>{page(route)}</Suspense>
      </main>
    </>
  );
}
