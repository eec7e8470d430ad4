/**
 * A TCP proxy in front of the bridge, so tests can break the network the way
 * it breaks for real: refuse connections, cut them, or silently stop
 * forwarding (a dead peer that never closes).
 */

import { connect, createServer, type Server, type Socket } from "node:net";

export class TcpProxy {
  /** When true, bytes are swallowed in both directions and nothing is closed. */
  blackhole = false;
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private readonly targetPort: number;
  port = 0;

  constructor(targetPort: number) {
    this.targetPort = targetPort;
  }

  get listening(): boolean {
    return this.server !== null;
  }

  /** Start accepting on `port` (0: any free port); returns the port. */
  listen(port = this.port): Promise<number> {
    const server = createServer((client) => this.accept(client));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => {
        const address = server.address();
        this.port = typeof address === "object" && address !== null ? address.port : port;
        resolve(this.port);
      });
    });
  }

  /** Refuse new connections from now on (existing ones stay until `cutAll`). */
  stopListening(): void {
    // close() stops accepting at once; its callback would wait for open connections.
    this.server?.close();
    this.server = null;
  }

  /** Reset every open connection. */
  cutAll(): void {
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
  }

  close(): void {
    this.stopListening();
    this.cutAll();
  }

  private accept(client: Socket): void {
    const upstream = connect(this.targetPort, "127.0.0.1");
    this.sockets.add(client);
    this.sockets.add(upstream);
    const forward = (from: Socket, to: Socket) => {
      from.on("data", (chunk) => {
        if (!this.blackhole) to.write(chunk);
      });
      from.on("close", () => {
        this.sockets.delete(from);
        to.destroy();
      });
      from.on("error", () => to.destroy());
    };
    forward(client, upstream);
    forward(upstream, client);
  }
}
