import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * An HTTP load balancer in front of `upstreams`, on loopback: each request goes to the next one in
 * turn (no sticky sessions), streamed both ways; a client that leaves takes its upstream request
 * with it. While `refusing`, it answers every request with a 502 page of its own, as a balancer
 * does when it has no healthy instance (during a deploy, say).
 */
export async function startLoadBalancer(upstreams: string[]) {
  let next = 0;
  let refusing = false;
  let refused = 0;
  const clients = new Set<Socket>();
  const server = http.createServer((req, res) => {
    if (refusing) {
      refused += 1;
      res.writeHead(502, { 'content-type': 'text/html' }).end('<h1>502 Bad Gateway</h1>');
      return;
    }
    const upstream = http.request(`${upstreams[next++ % upstreams.length]}${req.url}`, { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on('connection', (socket) => {
    clients.add(socket);
    socket.on('close', () => clients.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    /** How many requests were answered 502 so far. */
    get refused() {
      return refused;
    },
    setRefusing(value: boolean) {
      refusing = value;
    },
    /** Drops every client connection, as a balancer restarting does. */
    dropConnections() {
      for (const socket of clients) socket.destroy();
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}
