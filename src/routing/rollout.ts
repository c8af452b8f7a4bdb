/**
 * Gradual rollouts: which of a tenant's routers a new connection gets. The live (stable)
 * router takes every new connection but a share, `percent`, that goes to the candidate, chosen
 * by a stable hash of the client's address: one client keeps getting the same version while the
 * rollout lasts, whatever its source port, and raising the share only moves more clients to the
 * candidate (a client below 10 is below 50 too). The hash is salted with the candidate's
 * version, so that each rollout tries a different sample of clients first.
 *
 * Pure: no state, no I/O. Whoever holds the routers (a tenant's listener) asks `choose`.
 */

/** A router being rolled out, and the share of new connections it gets. */
export interface Candidate<R> {
  readonly router: R;
  /** 1–99: the share of new connections (by client address) that get `router`. */
  readonly percent: number;
  /** Salts the hash: the candidate's version, so that each rollout samples other clients. */
  readonly salt: number;
}

/** Which of 100 buckets a client address falls in (0–99), for this salt. */
export function bucketOf(address: string, salt: number): number {
  // FNV-1a, 32 bits, over the address as the client is known (an IPv4-mapped IPv6 address as its IPv4 address).
  const key = `${address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address.toLowerCase()}#${salt}`;
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % 100;
}

/** The router a new connection from `address` gets: the candidate for its share of clients, the stable one otherwise. */
export function choose<R>(stable: R, candidate: Candidate<R> | undefined, address: string): R {
  if (candidate === undefined) return stable;
  return bucketOf(address, candidate.salt) < candidate.percent ? candidate.router : stable;
}
