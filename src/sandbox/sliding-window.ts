/**
 * Events within the last `windowMs`: when each happened, and a value carried with it. The one
 * counter behind strikes, time-outs, source penalties (blame.ts) and slow synchronous calls
 * (tenant-isolate.ts). Times are whatever clock the caller passes (ms); nothing here reads one.
 */
export class SlidingWindow<T = undefined> {
  readonly windowMs: number;
  #events: { at: number; value: T }[] = [];

  constructor(windowMs: number) {
    this.windowMs = windowMs;
  }

  /** Records an event at `at` (with `value`); returns how many are in the window then. */
  add(at: number, ...value: T extends undefined ? [] : [T]): number {
    this.#prune(at);
    this.#events.push({ at, value: value[0] as T });
    return this.#events.length;
  }

  /** Events within the window ending at `at`. */
  count(at: number): number {
    this.#prune(at);
    return this.#events.length;
  }

  /** The events within the window ending at `at`, oldest first. */
  events(at: number): readonly { readonly at: number; readonly value: T }[] {
    this.#prune(at);
    return this.#events;
  }

  /** When the latest event happened, if any is kept. */
  get last(): number | undefined {
    return this.#events.at(-1)?.at;
  }

  clear(): void {
    this.#events = [];
  }

  #prune(at: number): void {
    let drop = 0;
    while (drop < this.#events.length && at - this.#events[drop]!.at >= this.windowMs) drop++;
    if (drop > 0) this.#events = this.#events.slice(drop);
  }
}
