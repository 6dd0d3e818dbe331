/**
 * What a bench server process counts itself between a `reset` and a `counters` message: only
 * what its own hooks tell it. Statements and transactions are counted by PostgreSQL (bench/statements.ts).
 */
export interface Counters {
  /** Tokens whose RS256 signature was checked (not answered from the token cache): the verifier's accept hook. */
  signatureChecks: number;
}

export const newCounters = (): Counters => ({ signatureChecks: 0 });

export type ServerMessage = 'reset' | 'counters' | 'stop';
export type ServerReport = { url: string } | { counters: Counters };
