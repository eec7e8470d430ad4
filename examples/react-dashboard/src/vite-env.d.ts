/// <reference types="vite/client" />

interface ImportMetaEnv {
  readonly VITE_BRIDGE_URL?: string;
  readonly VITE_BRIDGE_ANON_KEY?: string;
  readonly VITE_BRIDGE_TOKEN?: string;
}
