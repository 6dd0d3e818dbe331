/**
 * What a bench server process reports between a `reset` and a `counters` message: what the server
 * reports itself (ours on its metrics port). Statements and transactions are counted by PostgreSQL
 * (bench/statements.ts).
 */
export interface Counters {
  /** Tokens whose RS256 signature was checked (not answered from the token cache). */
  signatureChecks: number;
}

export const newCounters = (): Counters => ({ signatureChecks: 0 });

export type ServerMessage = 'reset' | 'counters' | 'stop';
export type ServerReport = { url: string } | { counters: Counters } | { reset: true };
