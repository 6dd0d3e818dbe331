import { randomBytes } from 'node:crypto';
import { TRPCError } from '@trpc/server';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { getOrCreateServerSecret } from '../../db/server-secrets.js';
import { createCursorCodec, createSharedCursorCodec } from '../../server/cursor.js';
import { openTestDatabase } from '../support/database.js';

const position = z.object({ at: z.iso.datetime().transform((value) => new Date(value)), id: z.string() });
const codec = createCursorCodec(randomBytes(32));
const key = { at: new Date('2026-11-28T12:00:00.123Z'), id: 'b' };

function refusal(fn: () => unknown) {
  try {
    fn();
  } catch (error) {
    return error;
  }
  return null;
}

function expectRefused(cursor: string, scope = 'list:a') {
  const error = refusal(() => codec.decode(scope, position, cursor));
  expect(error).toBeInstanceOf(TRPCError);
  expect(error).toMatchObject({ code: 'BAD_REQUEST', message: 'Invalid cursor' });
}

describe('paging cursors', () => {
  it('give back the sort key they were made from, timestamps to the millisecond', () => {
    expect(codec.decode('list:a', position, codec.encode('list:a', key))).toEqual(key);
  });

  it('are refused in another scope', () => {
    expectRefused(codec.encode('list:a', key), 'list:b');
  });

  it('are refused when signed with another secret: one server does not take another deployment’s cursors', () => {
    expectRefused(createCursorCodec(randomBytes(32)).encode('list:a', key));
  });

  it('are refused when edited anywhere', () => {
    const cursor = codec.encode('list:a', key);
    const [payload, mac] = cursor.split('.') as [string, string];
    const edited = Buffer.from(JSON.stringify({ ...key, id: 'c' })).toString('base64url');
    for (const forged of [`${edited}.${mac}`, `${payload}.${mac.slice(0, -1)}`, `${payload}.${mac}A`, `${cursor}.${mac}`]) {
      expectRefused(forged);
    }
  });

  it.each(['', '.', 'garbage', 'a.b', Buffer.from('{}').toString('base64url')])('refuse %j', (cursor) => {
    expectRefused(cursor);
  });

  it('refuse a genuine signature over a key of the wrong shape', () => {
    expectRefused(codec.encode('list:a', { at: 'yesterday', id: 1 }));
  });

  it('are understood by every instance on one database, also when the instances start together', async () => {
    const database = await openTestDatabase();
    try {
      const instances = await Promise.all(Array.from({ length: 4 }, () => createSharedCursorCodec(database.db)));
      const cursor = instances[0]!.encode('list:a', key);
      for (const instance of instances) expect(instance.decode('list:a', position, cursor)).toEqual(key);
      // A restart reads the same secret, so cursors handed out before it still work.
      expect((await createSharedCursorCodec(database.db)).decode('list:a', position, cursor)).toEqual(key);

      // The first start on a database: concurrent creators of a new secret all end up with the winner's.
      const name = `test-${randomBytes(6).toString('hex')}`;
      const secrets = await Promise.all(Array.from({ length: 8 }, () => getOrCreateServerSecret(database.db, { name })));
      expect(new Set(secrets.map((secret) => secret.toString('hex'))).size).toBe(1);
      expect(secrets[0]).toHaveLength(32);
    } finally {
      await database.close();
    }
  });
});
