/** What a bench server process counts between a `reset` and a `counters` message. */
export interface Counters {
  /** Every statement sent to the database, `begin` and `commit` included. */
  statements: number;
  /** Transactions begun. */
  transactions: number;
  /** Tokens whose RS256 signature was checked (not answered from the token cache). */
  signatureChecks: number;
}

export const newCounters = (): Counters => ({ statements: 0, transactions: 0, signatureChecks: 0 });

export type ServerMessage = 'reset' | 'counters' | 'stop';
export type ServerReport = { url: string } | { counters: Counters };
