/** PostgreSQL's SQLSTATE for a unique violation. */
const UNIQUE_VIOLATION = '23505';

/**
 * Whether `error`, or an error it wraps (Drizzle wraps driver errors in `cause`), is a unique
 * violation of one of `constraints`. postgres.js names the constraint `constraint_name`,
 * PGlite `constraint`.
 */
export function isUniqueViolation(error: unknown, constraints: readonly string[]): boolean {
  for (let current = error; current instanceof Error; current = current.cause) {
    const fields = current as Error & { code?: unknown; constraint_name?: unknown; constraint?: unknown };
    if (fields.code !== UNIQUE_VIOLATION) continue;
    const constraint = fields.constraint_name ?? fields.constraint;
    return typeof constraint === 'string' && constraints.includes(constraint);
  }
  return false;
}
