import { createHmac, timingSafeEqual } from 'node:crypto';
import { TRPCError } from '@trpc/server';
import type { z } from 'zod';
import type { Database } from '../db/database.js';
import { getOrCreateServerSecret } from '../db/server-secrets.js';

/**
 * Opaque paging cursors: base64url JSON of the last row's sort key, signed with a secret the
 * instances share and bound to a scope (the procedure and whose rows it pages). A cursor the
 * server did not issue for this very listing, edited or from elsewhere, is refused.
 */
export interface CursorCodec {
  encode(scope: string, key: Record<string, unknown>): string;
  /** The sort key in `cursor`, or `BAD_REQUEST` for anything this server did not issue for `scope`. */
  decode<Schema extends z.ZodType>(scope: string, schema: Schema, cursor: string): z.output<Schema>;
}

const MAC_BYTES = 16;

/** The codec of every instance on this database: they share the signing secret it keeps. */
export async function createSharedCursorCodec(db: Database): Promise<CursorCodec> {
  return createCursorCodec(await getOrCreateServerSecret(db, { name: 'cursor-signing' }));
}

export function createCursorCodec(secret: Buffer): CursorCodec {
  const sign = (scope: string, payload: string) =>
    createHmac('sha256', secret).update(`${scope}\n${payload}`).digest().subarray(0, MAC_BYTES).toString('base64url');

  return {
    encode(scope, key) {
      const payload = Buffer.from(JSON.stringify(key)).toString('base64url');
      return `${payload}.${sign(scope, payload)}`;
    },
    decode(scope, schema, cursor) {
      const [payload = '', mac = '', ...rest] = cursor.split('.');
      const given = Buffer.from(mac);
      const expected = Buffer.from(sign(scope, payload));
      if (rest.length > 0 || given.length !== expected.length || !timingSafeEqual(given, expected)) {
        throw invalidCursor();
      }
      let json: unknown;
      try {
        json = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
      } catch {
        throw invalidCursor();
      }
      const parsed = schema.safeParse(json);
      if (!parsed.success) throw invalidCursor();
      return parsed.data;
    },
  };
}

function invalidCursor() {
  return new TRPCError({ code: 'BAD_REQUEST', message: 'Invalid cursor' });
}
