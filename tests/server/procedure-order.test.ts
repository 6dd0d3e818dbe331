import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { appRouter } from '../../server/root.js';
import { adminProcedure, protectedProcedure } from '../../server/trpc.js';

interface Middleware {
  name: string;
  /** tRPC marks the middlewares it makes of `.input()` schemas. */
  _type?: string;
}

/** What a procedure runs, in order: `input` for each input parser, else the middleware's name. */
function runOrder(procedure: unknown): string[] {
  const { middlewares } = (procedure as { _def: { middlewares: Middleware[] } })._def;
  return middlewares.map((middleware) => (middleware._type === 'input' ? 'input' : middleware.name));
}

/** The token check, then every input parser, before the middleware that provisions (database work). */
function expectInputBeforeDatabase(order: string[], label: string) {
  const provisioning = order.indexOf('provisionCaller');
  expect(provisioning, label).toBeGreaterThanOrEqual(0);
  const inputs = order.flatMap((name, index) => (name === 'input' ? [index] : []));
  if (inputs.length === 0) return;
  expect(order.indexOf('requireSignIn'), label).toBeGreaterThanOrEqual(0);
  expect(order.indexOf('requireSignIn'), label).toBeLessThan(Math.min(...inputs));
  expect(Math.max(...inputs), label).toBeLessThan(provisioning);
}

describe('the order a procedure runs in', () => {
  it('every procedure of the API checks the token, then its input, before it provisions the caller', () => {
    const procedures = Object.entries(appRouter._def.procedures);
    expect(procedures.length).toBeGreaterThanOrEqual(11);
    for (const [path, procedure] of procedures) expectInputBeforeDatabase(runOrder(procedure), path);
  });

  it('a procedure without input pays for two middlewares: its metrics, then provisioning and the deadline together', () => {
    expect(runOrder((appRouter._def.procedures as Record<string, unknown>)['chat.getActiveSession'])).toEqual([
      'measured',
      'provisionCaller',
      'resolveMiddleware',
    ]);
  });

  it('holds whichever way a chain is written', () => {
    const schema = z.object({ n: z.number() });
    const extra = z.object({ m: z.number() });
    const noop = protectedProcedure.use(function ownMiddleware({ next }) {
      return next();
    });
    const chains = {
      'input, input': protectedProcedure.input(schema).input(extra),
      'use, input': noop.input(schema),
      'meta, output, input': protectedProcedure.meta({}).output(z.any()).input(schema),
      'admin, input': adminProcedure.input(schema),
    };
    for (const [label, chain] of Object.entries(chains)) {
      const order = runOrder(chain.query(() => null));
      expectInputBeforeDatabase(order, label);
    }
    // A middleware chained before .input() still runs after provisioning: it may use the caller's rows.
    const order = runOrder(noop.input(schema).query(() => null));
    expect(order.indexOf('ownMiddleware')).toBeGreaterThan(order.indexOf('provisionCaller'));
  });

  it('refuses concat, which would put another builder’s middlewares before provisioning', () => {
    expect(() => protectedProcedure.concat(protectedProcedure)).toThrow(/not supported/);
    expect(() => protectedProcedure.unstable_concat(protectedProcedure)).toThrow(/not supported/);
  });
});
