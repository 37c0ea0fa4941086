/**
 * Editor settings → the server's configuration keys, sent as `initializationOptions.settings`
 * (the last configuration layer). Only settings the user set go along, so the server's own
 * config files and defaults still apply to the rest.
 */

const KEYS: [setting: string, section: string, key: string][] = [
  ["model.name", "model", "name"],
  ["model.baseUrl", "model", "base_url"],
  ["model.api", "model", "api"],
  ["tasks.concurrency", "tasks", "concurrency"],
  ["tasks.attempts", "tasks", "attempts"],
  ["sandbox.backend", "sandbox", "backend"],
];

/** `userValue(setting)` is the value the user set for `offload.<setting>`, undefined when unset. */
export function serverSettings(userValue: (setting: string) => unknown): Record<string, Record<string, unknown>> {
  const settings: Record<string, Record<string, unknown>> = {};
  for (const [setting, section, key] of KEYS) {
    const value = userValue(setting);
    if (value !== undefined && value !== null && value !== "") (settings[section] ??= {})[key] = value;
  }
  return settings;
}

/**
 * The same settings as `OFFLOAD_*` environment variables (`model.base_url` is
 * `OFFLOAD_MODEL_BASE_URL`), for a command run beside the server, `offload doctor`, so that it
 * checks what the server will use.
 */
export function settingsEnv(settings: Record<string, Record<string, unknown>>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [section, values] of Object.entries(settings)) {
    for (const [key, value] of Object.entries(values)) env[`OFFLOAD_${section}_${key}`.toUpperCase()] = String(value);
  }
  return env;
}
