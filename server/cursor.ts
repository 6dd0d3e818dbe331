import { TRPCError } from '@trpc/server';
import type { z } from 'zod';

/** Cursors are opaque to callers: base64url JSON of the last row's sort key. */
export function encodeCursor(key: Record<string, unknown>): string {
  return Buffer.from(JSON.stringify(key)).toString('base64url');
}

/** The sort key in `cursor`, or `BAD_REQUEST` for anything this server would not have issued. */
export function decodeCursor<Schema extends z.ZodType>(schema: Schema, cursor: string): z.output<Schema> {
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    json = undefined;
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new TRPCError({ code: 'BAD_REQUEST', message: 'Invalid cursor' });
  return parsed.data;
}
