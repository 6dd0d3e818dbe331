import { once } from 'node:events';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Config } from '../server/config.js';

/** Listens where `config` says; `close` stops the server, then runs `andThen` (closing its database). */
export async function listen(server: http.Server, config: Pick<Config, 'port' | 'host'>, andThen = async () => {}) {
  server.listen(config.port, config.host);
  await once(server, 'listening');
  return {
    url: `http://${config.host}:${(server.address() as AddressInfo).port}`,
    async close() {
      const closed = once(server, 'close');
      server.close();
      await closed;
      await andThen();
    },
  };
}
