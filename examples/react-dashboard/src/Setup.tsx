import { useState, type FormEvent } from "react";

import { currentSettings, save } from "./config";

/** Asks for the bridge's URL and keys when neither the page URL nor the build gave them. */
export function Setup() {
  const [settings, setSettings] = useState(() => ({
    ...currentSettings(),
    url: currentSettings().url || "http://127.0.0.1:8000",
  }));
  const submit = (event: FormEvent) => {
    event.preventDefault();
    save(settings);
    window.location.reload();
  };
  const field = (name: keyof typeof settings, label: string, hint: string) => (
    <label>
      <span>{label}</span>
      <input
        name={name}
        value={settings[name]}
        onChange={(event) => setSettings({ ...settings, [name]: event.target.value })}
        autoComplete="off"
      />
      <small>{hint}</small>
    </label>
  );
  return (
    <form className="setup" onSubmit={submit}>
      <h1>Connect to a realtime-bridge</h1>
      {field("url", "Bridge URL", "`make run` serves on http://127.0.0.1:8000")}
      {field("apiKey", "Anon key", "SUPABASE_ANON_KEY from `realtime-bridge keys`")}
      {field("token", "User token", "the signed-in user's JWT (its `sub` is the user id)")}
      <button type="submit" disabled={!settings.url || !settings.apiKey}>
        Connect
      </button>
    </form>
  );
}
