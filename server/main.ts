import { DatabaseSetupError } from '../db/database.js';
import { startServer } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { createLogger } from './logger.js';

const SHUTDOWN_DEADLINE_MS = 10_000;

let config;
try {
  config = loadConfig();
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  process.stderr.write(`${error.message}\n`);
  process.exit(1);
}

const log = createLogger({
  level: config.logLevel,
  pretty: Boolean(process.stdout.isTTY) && config.nodeEnv !== 'production',
});

try {
  const server = await startServer(config, log);
  let stopping = false;
  const shutdown = async (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'Shutting down: finishing in-flight requests');
    setTimeout(() => {
      log.error('Shutdown deadline passed; exiting with requests still open');
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS).unref();
    await server.close();
    log.info('Stopped');
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
} catch (error) {
  log.fatal({ err: error }, 'Could not start');
  // What to change, on a line of its own, as for a bad environment.
  if (error instanceof DatabaseSetupError) process.stderr.write(`${error.message}\n`);
  process.exit(1);
}
