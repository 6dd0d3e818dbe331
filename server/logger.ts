import { pino } from 'pino';

export type Logger = pino.Logger;

export function createLogger(options: { level: string; pretty?: boolean }): Logger {
  return pino({
    level: options.level,
    // Never log credentials, even by accident.
    redact: ['req.headers.authorization', '*.authorization', '*.token'],
    ...(options.pretty && { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss' } } }),
  });
}
