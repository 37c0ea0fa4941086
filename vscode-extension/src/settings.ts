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
