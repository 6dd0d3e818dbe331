import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import { createApiClient } from '../client/index.js';
import { eq } from 'drizzle-orm';
import { openDatabase } from '../db/database.js';
import { organizations } from '../db/schema.js';
import { createEmptyDatabase } from './support/database.js';
import { interrupt, newcomerEnv, run, waitForListening } from './support/processes.js';

const projectRoot = join(import.meta.dirname, '..');
const runUrl = inject('databaseUrl');

/**
 * The repository's files as a fresh clone has them (tracked, or new and not ignored: no `.data/`),
 * in a new temporary folder. `node_modules` is linked rather than installed again.
 */
async function freshCopy(): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'fresh-clone-'));
  const { stdout } = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: projectRoot });
  for (const file of stdout.split('\0').filter((file) => file && existsSync(join(projectRoot, file)))) {
    await mkdir(dirname(join(dir, file)), { recursive: true });
    await cp(join(projectRoot, file), join(dir, file));
  }
  await symlink(join(projectRoot, 'node_modules'), join(dir, 'node_modules'), 'dir');
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** `npm …` in `cwd`; a failure says which command and what it printed. */
async function npm(args: string[], cwd: string, env: NodeJS.ProcessEnv) {
  try {
    return await run('npm', args, { cwd, env });
  } catch (error) {
    const { code, stdout, stderr } = error as { code: number; stdout: string; stderr: string };
    // Without the child's stack frames, which the test runner would take for its own.
    const printed = `${stdout}\n${stderr}`.replace(/^\s+at .*$/gm, '').trim();
    throw Object.assign(new Error(`npm ${args.join(' ')} exited with ${code}:\n${printed}`), { code, stdout, stderr });
  }
}

/** `npm run db:generate` on an unchanged schema writes nothing. */
async function expectNothingToGenerate(cwd: string, env: NodeJS.ProcessEnv) {
  const before = await readdir(join(cwd, 'db/migrations'), { recursive: true });
  const { stdout } = await npm(['run', 'db:generate'], cwd, env);
  expect(stdout).toMatch(/No schema changes/);
  expect(await readdir(join(cwd, 'db/migrations'), { recursive: true })).toEqual(before);
}

/** `npm start` in `cwd`, then a signed-in call; `whileRunning` runs with the server up. */
async function startAndCall(cwd: string, env: NodeJS.ProcessEnv, whileRunning: () => Promise<void> = async () => {}) {
  const server = spawn('npm', ['start'], { cwd, env, detached: true });
  try {
    const url = await waitForListening(server);
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    const { stdout } = await npm(['run', '-s', 'token', '--', '--email', 'ada@example.com', '--tenant', 'acme'], cwd, env);
    const me = await createApiClient({ url: `${url}/trpc`, getToken: () => stdout.trim() }).me.query();
    expect(me.organization.id).toBe('acme');
    await whileRunning();
  } finally {
    await interrupt(server);
  }
}

describe('the drizzle-kit commands on a fresh clone', () => {
  it('on the embedded PGlite: migrate and generate work, the server starts on the result, and migrate refuses while it runs', async () => {
    const copy = await freshCopy();
    try {
      // The README's default: nothing set, the database under .data/pglite of the clone.
      const env = newcomerEnv();
      expect(existsSync(join(copy.dir, '.data'))).toBe(false);
      await npm(['run', 'db:migrate'], copy.dir, env);
      await expectNothingToGenerate(copy.dir, env);

      await startAndCall(copy.dir, env, async () => {
        // PGlite is one process's database: a second one must not write the folder the server holds.
        const refused = await npm(['run', 'db:migrate'], copy.dir, env).then(
          () => undefined,
          (error: { code: number; stdout: string; stderr: string }) => error,
        );
        expect(refused?.code).not.toBe(0);
        expect(`${refused?.stdout}${refused?.stderr}`).toMatch(/in use by another process \(a running `npm start`\?\)/);
      });
      // Once the server has stopped, the folder is free again, and intact.
      await npm(['run', 'db:migrate'], copy.dir, env);
      const database = openDatabase({ kind: 'pglite', dataDir: join(copy.dir, '.data/pglite') });
      try {
        const rows = await database.db.select({ id: organizations.id }).from(organizations).where(eq(organizations.id, 'acme'));
        expect(rows).toEqual([{ id: 'acme' }]);
      } finally {
        await database.close();
      }
    } finally {
      await copy.remove();
    }
  }, 120_000);

  it.skipIf(!runUrl)('on PostgreSQL: migrate and generate work, and the server starts on the result', async () => {
    const copy = await freshCopy();
    const empty = (await createEmptyDatabase('commands'))!;
    try {
      const env = newcomerEnv({ DATABASE_URL: empty.url });
      // Behind a transaction-mode pooler, migrations go to DATABASE_DIRECT_URL: here the pooled
      // URL answers nothing at all, so a migration sent there would fail.
      const pooled = { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/pooler', DATABASE_POOL_MODE: 'transaction' };
      await npm(['run', 'db:migrate'], copy.dir, { ...env, ...pooled, DATABASE_DIRECT_URL: empty.url });
      await expectNothingToGenerate(copy.dir, env);
      await startAndCall(copy.dir, env);
      expect(existsSync(join(copy.dir, '.data/pglite'))).toBe(false);
    } finally {
      await empty.drop();
      await copy.remove();
    }
  }, 120_000);
});
