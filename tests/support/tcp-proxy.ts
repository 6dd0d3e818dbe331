import { once } from 'node:events';
import net from 'node:net';

/**
 * How the proxy treats traffic: `up` forwards it; `cut` resets every connection and refuses new
 * ones (a database that went down); `stall` forwards nothing either way and leaves new
 * connections unanswered (a vanished host or a dropped network path: nothing is refused, nothing
 * arrives). Leaving `stall` delivers what was held, as TCP does when a path comes back.
 */
export type ProxyState = 'up' | 'cut' | 'stall';

/** `url` with its host and port replaced by 127.0.0.1 and `port`: a URL through a proxy or pooler. */
export function onLoopbackPort(url: string, port: number): string {
  const proxied = new URL(url);
  proxied.hostname = '127.0.0.1';
  proxied.port = String(port);
  return proxied.toString();
}

/** A TCP proxy on loopback in front of `target`, for creating database outages in tests. */
export async function startTcpProxy(target: { host: string; port: number }) {
  let state: ProxyState = 'up';
  const connections = new Set<{ client: net.Socket; upstream: net.Socket }>();

  function applyState(connection: { client: net.Socket; upstream: net.Socket }) {
    for (const socket of [connection.client, connection.upstream]) {
      if (state === 'cut') socket.resetAndDestroy();
      else if (state === 'stall') socket.pause();
      else socket.resume();
    }
  }

  const server = net.createServer((client) => {
    if (state === 'cut') return client.resetAndDestroy();
    const upstream = net.connect(target.port, target.host);
    const connection = { client, upstream };
    connections.add(connection);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => {
      connections.delete(connection);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    applyState(connection);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;

  return {
    host: '127.0.0.1',
    port,
    /** `url` with its host and port replaced by the proxy's. */
    urlFor: (url: string) => onLoopbackPort(url, port),
    setState(next: ProxyState) {
      state = next;
      for (const connection of connections) applyState(connection);
    },
    async close() {
      state = 'cut';
      for (const connection of connections) applyState(connection);
      server.close();
      await once(server, 'close');
    },
  };
}
