import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';

const entry = fileURLToPath(new URL('../../client/index.ts', import.meta.url));

describe('the typed client in a frontend bundle', () => {
  it('pulls in no server, database or token-verification code: only the type of AppRouter', async () => {
    const result = await build({
      entryPoints: [entry],
      bundle: true,
      platform: 'browser',
      format: 'esm',
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    const inputs = Object.keys(result.metafile.inputs);
    expect(inputs).toContain('client/index.ts');
    const serverSide = inputs.filter((path) =>
      /^(server|db)\/|node_modules\/(drizzle-orm|postgres|jose|pino|@electric-sql|zod)\//.test(path),
    );
    expect(serverSide).toEqual([]);
    // The client's runtime: tRPC's client and superjson, nothing else of size.
    expect(inputs.some((path) => path.includes('node_modules/@trpc/client/'))).toBe(true);
    const bytes = result.outputFiles[0]!.contents.byteLength;
    expect(bytes).toBeLessThan(150_000);
  });
});
