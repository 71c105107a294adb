import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { takeTokenFromLocation } from "./api/auth";
import { makeTransport } from "./api/client";
import { App } from "./App";
import { TransportContext } from "./hooks/hooks";
import "./styles.css";

// A token handed over as /#token=… is read once and removed from the address bar
// before anything renders or is sent.
takeTokenFromLocation();
const transport = makeTransport();

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <TransportContext.Provider value={transport}>
      <App />
    </TransportContext.Provider>
  </StrictMode>,
);
