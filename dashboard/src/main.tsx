import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { takeTokenFromLocation } from "./api/auth";
import { makeClients, makeTransport } from "./api/client";
import { App } from "./App";
import { ClientsContext } from "./hooks/hooks";
import "./styles.css";

// A token handed over as /#token=… is read once and removed from the address bar
// before anything renders or is sent.
takeTokenFromLocation();
const clients = makeClients(makeTransport());

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <ClientsContext.Provider value={clients}>
      <App />
    </ClientsContext.Provider>
  </StrictMode>,
);
