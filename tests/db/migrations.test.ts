import { readFile } from 'node:fs/promises';
import { is } from 'drizzle-orm';
import { PgTable } from 'drizzle-orm/pg-core';
import postgres from 'postgres';
import { describe, expect, inject, it } from 'vitest';
import { openDatabase } from '../../db/database.js';
import * as schema from '../../db/schema.js';
import { createEmptyDatabase } from '../support/database.js';

const runUrl = inject('databaseUrl');

describe('migrations on start', () => {
  // Several instances share one PostgreSQL; PGlite belongs to a single process.
  it.skipIf(!runUrl)('are safe when several instances start at once', async () => {
    const empty = (await createEmptyDatabase('migrate'))!;
    const instances = Array.from({ length: 4 }, () => openDatabase({ kind: 'postgres', url: empty.url, poolSize: 2 }));
    try {
      await Promise.all(instances.map((instance) => instance.migrate()));
      const fresh = postgres(empty.url, { max: 1 });
      const applied = await fresh`select count(*)::int as n from drizzle.__drizzle_migrations`;
      const tables = await fresh`select count(*)::int as n from information_schema.tables where table_schema = 'public'`;
      await fresh.end();
      // Each committed migration applied once, and every table of the schema there.
      const journal = JSON.parse(await readFile(new URL('../../db/migrations/meta/_journal.json', import.meta.url), 'utf8'));
      expect(applied[0]?.n).toBe(journal.entries.length);
      expect(tables[0]?.n).toBe(Object.values(schema).filter((value) => is(value, PgTable)).length);
      // A later start finds nothing to do.
      await instances[0]!.migrate();
    } finally {
      await Promise.all(instances.map((instance) => instance.close()));
      await empty.drop();
    }
  });
});
