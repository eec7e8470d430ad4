import "./styles.css";

import { createClient } from "@realtime-bridge/client";
import { RealtimeBridgeProvider } from "@realtime-bridge/client/react";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import { readConfig } from "./config";
import { Dashboard } from "./Dashboard";
import { Setup } from "./Setup";

const container = document.getElementById("root");
if (container === null) throw new Error("index.html has no #root");
const root = createRoot(container);
const config = readConfig();

if (config === null) {
  root.render(
    <StrictMode>
      <Setup />
    </StrictMode>,
  );
} else {
  // One client (one socket) for the whole app, made once, outside React.
  const client = createClient({
    url: config.url,
    apiKey: config.apiKey,
    ...(config.token && { accessToken: config.token }),
    ...config.timings,
  });
  root.render(
    <StrictMode>
      <RealtimeBridgeProvider client={client}>
        <Dashboard userId={config.userId} bridgeUrl={config.url} />
      </RealtimeBridgeProvider>
    </StrictMode>,
  );
}
