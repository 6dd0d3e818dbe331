import { TRPCError } from '@trpc/server';
import { DrizzleQueryError } from 'drizzle-orm/errors';
import { type DestinationStream, pino } from 'pino';

export type Logger = pino.Logger;

export function createLogger(options: { level: string; pretty?: boolean; destination?: DestinationStream }): Logger {
  return pino(
    {
      level: options.level,
      // Never log credentials, even by accident.
      redact: ['req.headers.authorization', '*.authorization', '*.token'],
      serializers: { err: serializeError },
      ...(options.pretty && { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss' } } }),
    },
    options.destination,
  );
}

/**
 * Fields of an error from PostgreSQL that name things and never hold row values: postgres.js's
 * names, then PGlite's.
 */
const namingFields = [
  'severity',
  'schema_name',
  'table_name',
  'column_name',
  'constraint_name',
  'routine',
  'schema',
  'table',
  'column',
  'constraint',
] as const;

/**
 * An error as the log shows it: its type, code and message, and those of the errors it wraps,
 * without anything a statement carried. Drizzle's `DrizzleQueryError` puts the statement's
 * parameters in its message and in `params` (the text of a message sent, an email), so the log
 * keeps its statement (placeholders, no values) instead. PostgreSQL's `detail` ("Key (email)=(…)
 * already exists", "Failing row contains (…)") and `where` are dropped, and so is the message of a
 * data exception (class 22: "invalid input syntax for type uuid: "…""), which quotes the value.
 */
export function serializeError(error: unknown): unknown {
  return describe(error, 0);
}

function describe(error: unknown, depth: number): unknown {
  if (!(error instanceof Error)) return { type: typeof error };
  const fields = error as Error & Record<string, unknown>;
  const { code } = fields;
  // From PostgreSQL itself (postgres.js's PostgresError, PGlite's DatabaseError): a SQLSTATE and a severity.
  const fromPostgres = typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && typeof fields.severity === 'string';
  const logged: Record<string, unknown> = { type: fromPostgres ? 'DatabaseError' : error.constructor.name || error.name };
  if (typeof code === 'string' || typeof code === 'number') logged.code = code;
  let message = error.message;
  if (error instanceof DrizzleQueryError) {
    message = 'Failed query';
    logged.statement = error.query;
  } else if (error instanceof TRPCError && error.cause instanceof Error && error.message === error.cause.message) {
    // tRPC takes the message of what it wraps: said once, below, as the cause.
    message = error.code;
  } else if (fromPostgres) {
    for (const name of namingFields) if (typeof fields[name] === 'string') logged[name] = fields[name];
    if (code.startsWith('22')) message = 'data exception (message withheld: it quotes the value)';
  }
  logged.message = message;
  // A stack starts with the error's name and message, which may hold anything, over any number of
  // lines: kept only when that header is found exactly, and then after the message logged here.
  const header = `${error.name}: ${error.message}`;
  if (error.stack?.startsWith(header)) logged.stack = `${logged.type}: ${message}${error.stack.slice(header.length)}`;
  if (error.cause !== undefined && depth < 8) logged.cause = describe(error.cause, depth + 1);
  return logged;
}
