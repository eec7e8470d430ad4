/** One real bridge for the whole run, shared by the integration tests (each uses its own user ids). */

import type {} from "vitest";
import type { TestProject } from "vitest/node";

import { BridgeProcess, type BridgeInfo } from "./bridge.js";

declare module "vitest" {
  export interface ProvidedContext {
    bridge: BridgeInfo;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const bridge = await BridgeProcess.start();
  project.provide("bridge", bridge.info);
  return async () => {
    await bridge.destroy();
  };
}
