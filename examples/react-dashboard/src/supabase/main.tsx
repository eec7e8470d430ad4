/**
 * The supabase-js example of the docs (docs/clients.md, "supabase-js"), running
 * unchanged against the bridge: `supabase.html?url=<bridge>&apikey=<anon key>&token=<user JWT>`.
 * tests/test_browser.py drives it through an INSERT, an UPDATE and a DELETE.
 */

import { createClient } from "@supabase/supabase-js";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import { usePositions } from "./usePositions";

const params = new URLSearchParams(window.location.search);
const url = params.get("url") ?? "http://127.0.0.1:8000";
const token = params.get("token");
// Hosted Supabase: createClient('https://<project>.supabase.co', ANON_KEY, ...).
const supabase = createClient(url, params.get("apikey") ?? "", {
  ...(token && { accessToken: async () => token }),
});

function Positions() {
  const positions = Object.values(usePositions(supabase)).sort((a, b) => a.id - b.id);
  return (
    <ul id="positions">
      {positions.map((position) => (
        <li key={position.id} data-symbol={position.symbol}>
          {position.symbol} @ {position.current_price}
        </li>
      ))}
    </ul>
  );
}

const container = document.getElementById("root");
if (container === null) throw new Error("supabase.html has no #root");
createRoot(container).render(
  <StrictMode>
    <Positions />
  </StrictMode>,
);
