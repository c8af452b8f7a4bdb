import { type NetworkInterfaceInfo, networkInterfaces } from 'node:os';
import { type Ip, parseIp } from './ip.js';

/** Reads the interfaces' addresses, as os.networkInterfaces() reports them. */
export type InterfaceSource = () => NodeJS.Dict<NetworkInterfaceInfo[]>;

export interface HostAddressOptions {
  readonly source?: InterfaceSource;
  /**
   * How long a reading is trusted. os.networkInterfaces() costs about 45 µs (getifaddrs, on a
   * host with three interfaces), too much for every connection, so it is read again at most
   * this often, when a check needs it.
   */
  readonly refreshMs?: number;
  readonly now?: () => number;
}

/** One of this host's addresses: the interface that holds it. */
export interface HostAddress {
  readonly interface: string;
}

/** This host's own interface addresses, re-read when the last reading is older than `refreshMs`. */
export class HostAddresses {
  readonly #source: InterfaceSource;
  readonly #refreshMs: number;
  readonly #now: () => number;
  #readAt = Number.NEGATIVE_INFINITY;
  #addresses = new Map<string, HostAddress>();

  constructor(options: HostAddressOptions = {}) {
    this.#source = options.source ?? networkInterfaces;
    this.#refreshMs = options.refreshMs ?? 2000;
    this.#now = options.now ?? ((): number => performance.now());
  }

  /** The interface holding `ip`, if it is one of this host's addresses. */
  find(ip: Ip): HostAddress | undefined {
    const now = this.#now();
    if (now - this.#readAt >= this.#refreshMs) {
      this.#addresses = this.#read();
      this.#readAt = now;
    }
    return this.#addresses.get(key(ip));
  }

  #read(): Map<string, HostAddress> {
    const addresses = new Map<string, HostAddress>();
    for (const [name, list] of Object.entries(this.#source())) {
      for (const i of list ?? []) {
        const ip = parseIp(i.address);
        if (ip !== undefined) addresses.set(key(ip), { interface: name });
      }
    }
    return addresses;
  }
}

function key(ip: Ip): string {
  return `${ip.family}:${ip.value}`;
}
