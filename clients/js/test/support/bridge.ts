/**
 * A real realtime-bridge for the tests: `python -m realtime_bridge serve` from
 * the repository's venv, on an embedded Postgres in a temporary DATA_DIR.
 */

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

// Path strings, not `new URL(...)`: under happy-dom, URL is the DOM's.
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
/** The repository's venv: `../../.venv/bin/python` from `clients/js`. */
export const PYTHON = process.env.REALTIME_BRIDGE_PYTHON ?? join(REPO, ".venv", "bin", "python");

export interface BridgeInfo {
  url: string;
  port: number;
  dataDir: string;
  /** The Postgres the bridge captures from. */
  databaseUrl: string;
  anonKey: string;
  serviceKey: string;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * The environment of a bridge on `dataDir`: our plugins with their demo tables, the testing API, and
 * `databaseUrl` or else the embedded Postgres (nothing from the caller's shell).
 */
export function bridgeEnv(dataDir: string, databaseUrl?: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (/^(DATABASE_URL|SUPABASE_|PORT$|HOST$|DATA_DIR$|PLUGIN_PATHS$|AUTH_DISABLED$)/.test(name)) {
      continue;
    }
    env[name] = value;
  }
  return {
    ...env,
    DATA_DIR: dataDir,
    PLUGIN_PATHS: join(REPO, "plugins"),
    ENABLE_TESTING_API: "true",
    // The tests drive the bundled trading plugins: their tables, in any database.
    DEMO_SCHEMA: "true",
    LOG_LEVEL: "WARNING",
    ...(databaseUrl !== undefined && { DATABASE_URL: databaseUrl }),
  };
}

export class BridgeProcess {
  readonly dataDir: string;
  readonly port: number;
  readonly databaseUrl: string;
  private readonly external: boolean;
  private child: ChildProcess | null = null;
  private keys: { anonKey: string; serviceKey: string } | null = null;

  private constructor(dataDir: string, port: number, databaseUrl: string, external: boolean) {
    this.dataDir = dataDir;
    this.port = port;
    this.databaseUrl = databaseUrl;
    this.external = external;
  }

  /**
   * A bridge on `databaseUrl`, or on an embedded Postgres in a new folder.
   * Either way Postgres runs on its own, as in production: the bridge only
   * stops a server it started itself, so this one outlives bridge restarts.
   */
  static async start(databaseUrl?: string): Promise<BridgeProcess> {
    const dataDir = mkdtempSync(join(tmpdir(), "rb-js-"));
    const port = await freePort();
    if (databaseUrl !== undefined) {
      const bridge = new BridgeProcess(dataDir, port, databaseUrl, true);
      await bridge.serve();
      return bridge;
    }
    const dsn = await python(
      "from pathlib import Path; from realtime_bridge.embedded import EmbeddedPostgres; " +
        `print(EmbeddedPostgres(Path(${JSON.stringify(dataDir)})).start())`,
      dataDir,
    );
    const bridge = new BridgeProcess(dataDir, port, dsn.trim(), false);
    await bridge.serve();
    return bridge;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get info(): BridgeInfo {
    if (this.keys === null) throw new Error("bridge not started");
    return {
      url: this.url,
      port: this.port,
      dataDir: this.dataDir,
      databaseUrl: this.databaseUrl,
      ...this.keys,
    };
  }

  /** Start serving (again, on the same folder and port) and wait until healthy. */
  async serve(): Promise<void> {
    const log = createWriteStream(join(this.dataDir, "bridge.log"), { flags: "a" });
    const child = spawn(PYTHON, ["-m", "realtime_bridge", "serve", "--port", String(this.port)], {
      cwd: this.dataDir, // no stray .env from the repository
      env: bridgeEnv(this.dataDir, this.external ? this.databaseUrl : undefined),
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    this.child = child;
    // If the test run itself is killed, do not leave the bridge behind.
    const orphanGuard = () => child.kill("SIGKILL");
    process.once("exit", orphanGuard);
    child.once("exit", () => process.off("exit", orphanGuard));
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) {
        throw new Error(`the bridge exited (${child.exitCode}):\n${this.log()}`);
      }
      try {
        // A plain TCP check first: under happy-dom, a refused fetch is logged.
        if (await listening(this.port)) {
          const response = await fetch(`${this.url}/health`);
          if (response.status === 200) break;
        }
      } catch {
        // not listening yet
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (Date.now() >= deadline) throw new Error(`the bridge never became healthy:\n${this.log()}`);
    this.keys ??= await readKeys(this.dataDir);
  }

  /** Stop the bridge process (Postgres keeps running). */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (child === null || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGINT");
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    await exited;
    clearTimeout(timer);
  }

  /** Stop the bridge and its embedded Postgres (if it has one), and remove the folder. */
  async destroy(): Promise<void> {
    await this.stop();
    if (!this.external) {
      await python(
      "from pathlib import Path; from realtime_bridge.embedded import EmbeddedPostgres; " +
        `EmbeddedPostgres(Path(${JSON.stringify(this.dataDir)})).stop("immediate")`,
        this.dataDir,
      ).catch(() => undefined);
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  log(): string {
    try {
      return readFileSync(join(this.dataDir, "bridge.log"), "utf8").slice(-4000);
    } catch {
      return "";
    }
  }
}

/** Whether something accepts TCP connections on `port` (at 127.0.0.1). */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

async function readKeys(dataDir: string): Promise<{ anonKey: string; serviceKey: string }> {
  // The secret lives in DATA_DIR whatever the database.
  const { stdout } = await run(PYTHON, ["-m", "realtime_bridge", "keys"], {
    cwd: dataDir,
    env: bridgeEnv(dataDir),
  });
  const value = (name: string) => {
    const match = new RegExp(`^${name}=(.+)$`, "m").exec(stdout);
    if (!match?.[1]) throw new Error(`keys printed no ${name}:\n${stdout}`);
    return match[1].trim();
  };
  return { anonKey: value("SUPABASE_ANON_KEY"), serviceKey: value("SUPABASE_SERVICE_KEY") };
}

/** Run Python code with the bridge's environment (its DATA_DIR); returns stdout. */
export async function python(code: string, dataDir: string): Promise<string> {
  const { stdout } = await run(PYTHON, ["-c", code], { cwd: dataDir, env: bridgeEnv(dataDir) });
  return stdout;
}

/** Run SQL on a bridge's Postgres (which outlives the bridge process), each statement on its own. */
export async function sql(
  bridge: Pick<BridgeInfo, "databaseUrl" | "dataDir">,
  ...statements: string[]
): Promise<void> {
  await python(
    [
      "import asyncio, asyncpg",
      "async def main():",
      `    conn = await asyncpg.connect(${JSON.stringify(bridge.databaseUrl)})`,
      `    for statement in ${JSON.stringify(statements)}:`,
      "        await conn.execute(statement)",
      "    await conn.close()",
      "asyncio.run(main())",
    ].join("\n"),
    bridge.dataDir,
  );
}

/** The same Postgres server, another database. */
export function withDatabase(databaseUrl: string, database: string): string {
  return databaseUrl.replace(/\/[^/?]*(\?.*)?$/, (_match, query: string | undefined) => `/${database}${query ?? ""}`);
}

/** A signed `authenticated` token for `userId`, made from the bridge's JWT secret. */
export async function userToken(dataDir: string, userId: string, ttlSeconds: number): Promise<string> {
  const out = await python(
    [
      "from pathlib import Path",
      "from realtime_bridge.auth import Authenticator, load_or_create_secret",
      `secret = load_or_create_secret(Path(${JSON.stringify(dataDir)}))`,
      `print(Authenticator(secret).make_token("authenticated", sub=${JSON.stringify(userId)}, ttl=${ttlSeconds}))`,
    ].join("\n"),
    dataDir,
  );
  return out.trim();
}
