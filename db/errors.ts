/** PostgreSQL's SQLSTATE for a unique violation. */
const UNIQUE_VIOLATION = '23505';

/** The chain of `error` and the errors it wraps (Drizzle and tRPC wrap driver errors in `cause`). */
function* causes(error: unknown): Generator<Error & { code?: unknown }> {
  for (let current = error; current instanceof Error; current = current.cause) yield current;
}

/**
 * Whether `error`, or an error it wraps, is a unique violation of one of `constraints`.
 * postgres.js names the constraint `constraint_name`, PGlite `constraint`.
 */
export function isUniqueViolation(error: unknown, constraints: readonly string[]): boolean {
  for (const current of causes(error)) {
    if (current.code !== UNIQUE_VIOLATION) continue;
    const fields = current as { constraint_name?: unknown; constraint?: unknown };
    const constraint = fields.constraint_name ?? fields.constraint;
    return typeof constraint === 'string' && constraints.includes(constraint);
  }
  return false;
}

/** Errors of the connection itself, from postgres.js and from Node's sockets. */
const connectionErrorCodes = new Set([
  'CONNECT_TIMEOUT',
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

/**
 * SQLSTATEs meaning "not now" rather than "wrong": connection exceptions (class 08), insufficient
 * resources such as too many connections (class 53), a server shutting down or starting
 * (57P01-57P03), a statement cancelled by `statement_timeout` (57014) or by `lock_timeout`
 * (55P03), and the transaction conflicts a retry resolves (40001, 40P01).
 */
function isTransientSqlState(code: string): boolean {
  return /^(08|53)/.test(code) || ['57P01', '57P02', '57P03', '57014', '55P03', '40001', '40P01'].includes(code);
}

/** Whether `error` means the database cannot serve now (unreachable, overloaded, timed out). */
export function isDatabaseUnavailable(error: unknown): boolean {
  for (const current of causes(error)) {
    if (typeof current.code !== 'string') continue;
    if (connectionErrorCodes.has(current.code)) return true;
    if (/^[0-9A-Z]{5}$/.test(current.code) && isTransientSqlState(current.code)) return true;
  }
  return false;
}
