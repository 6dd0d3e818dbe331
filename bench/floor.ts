import { initTRPC } from '@trpc/server';
import { createHTTPServer } from '@trpc/server/adapters/standalone';
import type { RouterOutputs } from '../client/index.js';
import type { Config } from '../server/config.js';
import { listen } from './listen.js';

// The answer is a chat session as the API's `chat.getActiveSession` returns it, checked against
// the API's own output type: when the session's shape changes, this stops compiling rather than
// leaving the floor answering something smaller than ours does.
const session = {
  id: '0b5f6a0e-58f5-4d0e-9a53-3f7cbb3f7d41',
  title: 'New Chat',
  isActive: true,
  createdAt: new Date('2026-01-01T00:00:00.000Z'),
  updatedAt: new Date('2026-01-01T00:00:00.000Z'),
} satisfies RouterOutputs['chat']['getActiveSession'];

/**
 * The floor: a bare tRPC server (the standalone adapter, no transformer) answering a constant. No
 * token, no database: what tRPC itself costs per request on this machine.
 */
export async function startFloorServer(config: Pick<Config, 'port' | 'host'>) {
  const t = initTRPC.create();
  const router = t.router({ chat: t.router({ getActiveSession: t.procedure.query(() => session) }) });
  const server = createHTTPServer({ router, basePath: '/trpc/' });
  return listen(server, config);
}
